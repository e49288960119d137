"""web/wanflow.js: the model loader draws the variant it detected (status text), without adding a
widget; the MoE sampler's boundary shows "auto" at 0 while its value stays 0.

Runs the extension under Node.js with a stand-in for the frontend's ``app`` module (ComfyUI
serves the file at /extensions/<pack>/wanflow.js, so it imports ../../scripts/app.js).
Skipped where ``node`` is not installed.
"""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NODE = shutil.which("node")

FAKE_APP = "export const app = { extensions: [], registerExtension(ext) { this.extensions.push(ext); } };\n"

DRIVER = """
import { app } from "./scripts/app.js";
await import("./extensions/comfyui-wanflow/wanflow.js");
const report = { names: app.extensions.map((e) => e.name) };
function NodeType() {}
NodeType.prototype.onExecuted = function () { this.calledOriginal = true; };
const Other = function () {};
const Latent = function () {};
for (const ext of app.extensions) {
  await ext.beforeRegisterNodeDef(NodeType, { name: "WanFlowModelLoader" });
  await ext.beforeRegisterNodeDef(Other, { name: "WanFlowVAELoader" });
  await ext.beforeRegisterNodeDef(Latent, { name: "WanFlowEmptyVideoLatent" });
}
const node = new NodeType();
node.size = [300, 60];
node.widgets = [{ name: "model_name" }, { name: "storage_dtype" }, { name: "attention" }];
node.computeSize = () => [300, 100];
node.setSize = function (size) { this.size = size; };
node.setDirtyCanvas = () => {};
const drawn = [];
const ctx = { save() {}, restore() {}, fillText(text, x, y) { drawn.push([text, x, y]); },
              measureText(text) { return { width: text.length * 6 }; } };
node.onDrawForeground(ctx);
report.drawnBeforeRun = drawn.length;
node.onExecuted({ text: ["Wan 2.2 T2V-14B (high-noise expert)"] });
node.onDrawForeground(ctx);
report.drawn = [...drawn];
report.size = node.size;
report.calledOriginal = node.calledOriginal === true;
report.widgets = node.widgets.length;
report.otherPatched = typeof Other.prototype.onDrawForeground === "function";
report.latentPatched = typeof Latent.prototype.onDrawForeground === "function";
drawn.length = 0;
node.onExecuted({ text: ["Wan 2.2 T2V-14B (high-noise expert) (ComfyUI, scaled fp8 (float8_e4m3fn), attention sdpa)"] });
node.onDrawForeground(ctx);
report.wrapped = drawn;
report.wrappedSize = node.size;
console.log(JSON.stringify(report));
"""


def run_driver(tmp_path, driver):
    """Run ``driver`` (an ES module) beside the extension, laid out as ComfyUI serves it; its last
    line of output is a JSON report."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "app.js").write_text(FAKE_APP)
    pack = tmp_path / "extensions" / "comfyui-wanflow"
    pack.mkdir(parents=True)
    shutil.copy(ROOT / "web" / "wanflow.js", pack / "wanflow.js")
    (tmp_path / "driver.mjs").write_text(driver)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    result = subprocess.run([NODE, "driver.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_loader_draws_the_detected_variant(tmp_path):
    report = run_driver(tmp_path, DRIVER)
    assert report["names"] == ["WanFlow.StatusText", "WanFlow.AutoAtZero"]
    assert report["drawnBeforeRun"] == 0
    assert report["drawn"] == [["Detected: Wan 2.2 T2V-14B (high-noise expert)", 10, 114]]
    assert report["size"] == [300, 118]  # grown to fit the line under the widgets
    assert report["calledOriginal"] and report["widgets"] == 3  # chained, and no widget added
    assert not report["otherPatched"] and report["latentPatched"]
    # a long status wraps at the node's width (280 px = 46 characters here) and the node grows to show it
    assert report["wrapped"] == [["Detected: Wan 2.2 T2V-14B (high-noise expert)", 10, 114],
                                 ["(ComfyUI, scaled fp8 (float8_e4m3fn),", 10, 132],
                                 ["attention sdpa)", 10, 150]]
    assert report["wrappedSize"] == [300, 154]  # the widgets' 100 px + three 18 px lines


# The frontend's number widget (litegraph NumberWidget): the canvas draws the text of its
# `_displayValue` getter; ComfyUI saves `widget.value` in widgets_values.
AUTO_DRIVER = """
import { app } from "./scripts/app.js";
await import("./extensions/comfyui-wanflow/wanflow.js");
class BaseWidget {
  constructor(name, value, options = {}) { this.name = name; this.value = value; this.options = options; }
  get computedDisabled() { return this.disabled === true; }
  get _displayValue() { return String(this.value); }
}
class NumberWidget extends BaseWidget {
  get _displayValue() {
    if (this.computedDisabled) return "";
    return Number(this.value).toFixed(this.options.precision !== undefined ? this.options.precision : 3);
  }
}
function Sampler() {  // widgets exist before onNodeCreated, as in the frontend
  this.widgets = [new NumberWidget("cfg_low", 0, { precision: 1 }), new NumberWidget("boundary", 0),
                  new NumberWidget("denoise", 1, { precision: 2 })];
  this.size = [300, 200];
}
Sampler.prototype.onNodeCreated = function () { this.createdBefore = true; return "original"; };
function Decode() { this.widgets = [new NumberWidget("boundary", 0)]; }
for (const ext of app.extensions) {
  await ext.beforeRegisterNodeDef(Sampler, { name: "WanFlowMoESampler" });
  await ext.beforeRegisterNodeDef(Decode, { name: "WanFlowVAEDecode" });
}
const node = new Sampler();
const returned = node.onNodeCreated();
node.onNodeCreated();  // created twice (e.g. a clone): still one getter
const [cfg, boundary, denoise] = node.widgets;
const shown = () => node.widgets.map((w) => w._displayValue);
const report = { returned, createdBefore: node.createdBefore === true, atZero: shown() };
report.savedAtZero = node.widgets.map((w) => w.value);
boundary.value = 0.875;
report.set = shown();
report.savedSet = node.widgets.map((w) => w.value);
boundary.value = 0;
boundary.disabled = true;  // converted to an input: the frontend draws no value
report.disabled = boundary._displayValue;
const other = new Decode();
other.onNodeCreated?.();
report.otherNode = other.widgets[0]._displayValue;
report.decodePatched = Object.prototype.hasOwnProperty.call(Decode.prototype, "onNodeCreated");
report.json = JSON.stringify({ widgets_values: node.widgets.map((w) => w.value) });
node.setSize = function (size) { this.size = size; };
node.computeSize = () => [300, 200];
node.setDirtyCanvas = () => {};
const drawn = [];
const ctx = { save() {}, restore() {}, fillText(text) { drawn.push(text); },
              measureText(text) { return { width: text.length * 6 }; } };
node.onExecuted({ text: ["boundary 0.875 (automatic): high-noise expert 6 steps, low-noise expert 2 steps"] });
node.onDrawForeground(ctx);
report.status = drawn;
console.log(JSON.stringify(report));
"""


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_sampler_boundary_shows_auto_at_zero_and_saves_the_number(tmp_path):
    report = run_driver(tmp_path, AUTO_DRIVER)
    assert report["returned"] == "original" and report["createdBefore"]  # the node's own onNodeCreated still runs
    assert report["atZero"] == ["0.0", "auto", "1.00"]  # only the boundary, and only its 0
    assert report["set"] == ["0.0", "0.875", "1.00"]
    assert report["savedAtZero"] == [0, 0, 1] and report["savedSet"] == [0, 0.875, 1]
    assert json.loads(report["json"]) == {"widgets_values": [0, 0, 1]}  # saved workflows keep the number 0
    assert report["disabled"] == ""
    assert report["otherNode"] == "0.000" and not report["decodePatched"]
    # the status text still works on the sampler (wrapped over three lines at this width)
    assert len(report["status"]) == 3 and " ".join(report["status"]) == \
        "Experts: boundary 0.875 (automatic): high-noise expert 6 steps, low-noise expert 2 steps"


def test_pack_declares_the_web_directory():
    import wanflow

    assert (ROOT / wanflow.WEB_DIRECTORY / "wanflow.js").is_file()
