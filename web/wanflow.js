// WanFlow frontend extension: one line of status text on some nodes after they ran.
//
// The model loader reports the variant it detected ("Wan 2.2 T2V-14B (high-noise expert) ..."),
// the latent and conditioning nodes the size they used (and what they rounded). Each returns
// {"ui": {"text": [...]}}, which ComfyUI passes to node.onExecuted. The text is drawn under the
// widgets instead of being added as a widget, so a saved workflow keeps exactly the node's
// widgets_values.
import { app } from "../../scripts/app.js";

const LABELS = {
  WanFlowModelLoader: "Detected",
  WanFlowEmptyVideoLatent: "Latent",
  WanFlowImageToVideo: "Size",
  WanFlowReferenceToVideo: "Size",
};
const LINE_HEIGHT = 18;

function fitText(ctx, text, width) {
  if (ctx.measureText(text).width <= width) return text;
  let shown = text;
  while (shown.length > 1 && ctx.measureText(shown + "…").width > width) shown = shown.slice(0, -1);
  return shown + "…";
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
      const line = fitText(ctx, `${label}: ${this.wanflowStatus}`, this.size[0] - 20);
      ctx.fillText(line, 10, this.size[1] - 4);
      ctx.restore();
    };
  },
});
