// WanFlow frontend extension: show on the model loader what it detected in the file.
//
// WanFlow Model Loader returns {"ui": {"text": ["Wan 2.2 T2V-14B (high-noise expert) (...)"]}};
// ComfyUI passes that to node.onExecuted. The text is drawn under the widgets instead of being
// added as a widget, so a saved workflow keeps exactly the node's widgets_values.
import { app } from "../../scripts/app.js";

const NODE_TYPE = "WanFlowModelLoader";
const LINE_HEIGHT = 18;

function fitText(ctx, text, width) {
  if (ctx.measureText(text).width <= width) return text;
  let shown = text;
  while (shown.length > 1 && ctx.measureText(shown + "…").width > width) shown = shown.slice(0, -1);
  return shown + "…";
}

app.registerExtension({
  name: "WanFlow.DetectedVariant",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      const text = Array.isArray(output?.text) ? output.text.join(" ") : "";
      this.wanflowDetected = text;
      if (text && typeof this.computeSize === "function") {
        const needed = this.computeSize()[1] + LINE_HEIGHT;
        if (this.size[1] < needed) this.setSize([this.size[0], needed]);
      }
      this.setDirtyCanvas?.(true, true);
    };

    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      if (!this.wanflowDetected || this.flags?.collapsed) return;
      ctx.save();
      ctx.font = "12px sans-serif";
      ctx.fillStyle = "#9c9";
      ctx.textBaseline = "bottom";
      const line = fitText(ctx, "Detected: " + this.wanflowDetected, this.size[0] - 20);
      ctx.fillText(line, 10, this.size[1] - 4);
      ctx.restore();
    };
  },
});
