"""web/wanflow.js: the model loader draws the variant it detected (status text), without adding a widget.

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


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_loader_draws_the_detected_variant(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "app.js").write_text(FAKE_APP)
    pack = tmp_path / "extensions" / "comfyui-wanflow"
    pack.mkdir(parents=True)
    shutil.copy(ROOT / "web" / "wanflow.js", pack / "wanflow.js")
    (tmp_path / "driver.mjs").write_text(DRIVER)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    result = subprocess.run([NODE, "driver.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["names"] == ["WanFlow.StatusText"]
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


def test_pack_declares_the_web_directory():
    import wanflow

    assert (ROOT / wanflow.WEB_DIRECTORY / "wanflow.js").is_file()
