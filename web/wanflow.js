// WanFlow frontend extension: one line of status text on some nodes after they ran.
//
// The model loader reports the variant it detected ("Wan 2.2 T2V-14B (high-noise expert) ..."),
// the latent and conditioning nodes the size they used (and what they rounded), the MoE sampler
// the boundary it used and how the steps went to the experts. Each returns
// {"ui": {"text": [...]}}, which ComfyUI passes to node.onExecuted. The text is drawn under the
// widgets instead of being added as a widget, so a saved workflow keeps exactly the node's
// widgets_values.
//
// A second extension shows "auto" on number widgets where 0 means "automatic" (the MoE sampler's
// boundary): only the text drawn on the canvas changes, the widget's value and so the saved
// widgets_values stay the number 0.
import { app } from "../../scripts/app.js";

const LABELS = {
  WanFlowModelLoader: "Detected",
  WanFlowEmptyVideoLatent: "Latent",
  WanFlowImageToVideo: "Size",
  WanFlowReferenceToVideo: "Size",
  WanFlowSubjectToVideo: "Size",
  WanFlowMoESampler: "Experts",
};
const LINE_HEIGHT = 18;
const MAX_LINES = 3;

function fitText(ctx, text, width) {
  if (ctx.measureText(text).width <= width) return text;
  let shown = text;
  while (shown.length > 1 && ctx.measureText(shown + "…").width > width) shown = shown.slice(0, -1);
  return shown + "…";
}

// Words wrapped to the node's width, at most MAX_LINES lines (the last one cut with "…").
function wrapText(ctx, text, width) {
  const lines = [];
  let line = "";
  for (const word of text.split(" ")) {
    const trial = line ? `${line} ${word}` : word;
    if (!line || ctx.measureText(trial).width <= width) {
      line = trial;
    } else {
      lines.push(line);
      line = word;
    }
  }
  if (line) lines.push(line);
  if (lines.length > MAX_LINES) {
    lines.splice(MAX_LINES - 1, lines.length, lines.slice(MAX_LINES - 1).join(" "));
  }
  return lines.map((shown) => fitText(ctx, shown, width));
}

app.registerExtension({
  name: "WanFlow.StatusText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const label = LABELS[nodeData?.name];
    if (!label) return;

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      const text = Array.isArray(output?.text) ? output.text.join(" ") : "";
      this.wanflowStatus = text;
      if (text && typeof this.computeSize === "function") {
        const needed = this.computeSize()[1] + LINE_HEIGHT;
        if (this.size[1] < needed) this.setSize([this.size[0], needed]);
      }
      this.setDirtyCanvas?.(true, true);
    };

    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      if (!this.wanflowStatus || this.flags?.collapsed) return;
      ctx.save();
      ctx.font = "12px sans-serif";
      ctx.fillStyle = "#9c9";
      ctx.textBaseline = "bottom";
      const lines = wrapText(ctx, `${label}: ${this.wanflowStatus}`, this.size[0] - 20);
      if (lines.length > 1 && typeof this.computeSize === "function") {
        const needed = this.computeSize()[1] + LINE_HEIGHT * lines.length;
        if (this.size[1] < needed) this.setSize([this.size[0], needed]);
      }
      lines.forEach((line, index) => {
        ctx.fillText(line, 10, this.size[1] - 4 - (lines.length - 1 - index) * LINE_HEIGHT);
      });
      ctx.restore();
    };
  },
});

// Number widgets whose 0 means "automatic", by node type.
const AUTO_AT_ZERO = {
  WanFlowMoESampler: ["boundary"],
};

// The frontend's number widget draws the text its `_displayValue` getter returns; an own getter
// on the widget puts "auto" there for 0 and leaves every other value to the original getter.
function showAutoAtZero(widget) {
  if (!widget || widget.wanflowAutoAtZero) return;
  let proto = Object.getPrototypeOf(widget);
  let original;
  while (proto && !original) {
    original = Object.getOwnPropertyDescriptor(proto, "_displayValue")?.get;
    proto = Object.getPrototypeOf(proto);
  }
  Object.defineProperty(widget, "_displayValue", {
    configurable: true,
    get() {
      if (Number(this.value) === 0 && !this.computedDisabled) return "auto";
      return original ? original.call(this) : String(this.value);
    },
  });
  widget.wanflowAutoAtZero = true;
}

app.registerExtension({
  name: "WanFlow.AutoAtZero",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const names = AUTO_AT_ZERO[nodeData?.name];
    if (!names) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      for (const widget of this.widgets ?? []) {
        if (names.includes(widget.name)) showAutoAtZero(widget);
      }
      return result;
    };
  },
});
