"""Headless runner: UI and API workflows, UI-only nodes, modes, --set, errors and exit codes."""
import copy
import json

import av
import numpy as np
import pytest
from PIL import Image

from wanflow.nodes import comfy_adapter as ca
from wanflow.runner import cli, errors, execute, workflow
from wanflow.runner.registry import node_classes


def ui_node(node_id, kind, widgets=(), inputs=(), outputs=(), mode=0, title=None):
    node = {"id": node_id, "type": kind, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": node_id,
            "mode": mode, "inputs": list(inputs), "outputs": list(outputs), "properties": {},
            "widgets_values": list(widgets)}
    if title:
        node["title"] = title
    return node


def load_save_ui(image="frames.webp", fmt="webp", prefix="clip"):
    """LoadImage -> (Reroute) -> SaveVideo, plus a note: the smallest real pack workflow."""
    return {
        "last_node_id": 4, "last_link_id": 2, "version": 0.4, "config": {}, "extra": {}, "groups": [],
        "nodes": [
            ui_node(1, "LoadImage", [image, "image"],
                    outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [1]},
                             {"name": "MASK", "type": "MASK", "links": None}]),
            ui_node(2, "Reroute", inputs=[{"name": "", "type": "*", "link": 1}],
                    outputs=[{"name": "", "type": "IMAGE", "links": [2]}]),
            ui_node(3, "WanFlowSaveVideo", [prefix, fmt, 16.0, 90],
                    inputs=[{"name": "images", "type": "IMAGE", "link": 2}], title="Save"),
            ui_node(4, "Note", ["Put frames.webp in the input folder."]),
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]],
    }


@pytest.fixture()
def dirs(tmp_path):
    inp, out = tmp_path / "input", tmp_path / "output"
    inp.mkdir()
    frames = [Image.fromarray(np.full((24, 40, 3), 40 * i, np.uint8)) for i in range(5)]
    frames[0].save(inp / "frames.webp", save_all=True, append_images=frames[1:], lossless=True)
    frames[0].save(inp / "still.png")
    yield tmp_path
    ca.configure_headless(None, None, None)


def run_cli(dirs, flow, *extra):
    path = dirs / "flow.json"
    path.write_text(json.dumps(flow))
    return cli.main(["run", str(path), "--input", str(dirs / "input"), "--output", str(dirs / "output"),
                     "--quiet", *extra])


def outputs(dirs):
    out = dirs / "output"
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) if out.exists() else []


def test_ui_workflow_runs_and_embeds_graph(dirs):
    flow = load_save_ui()
    assert run_cli(dirs, flow) == errors.EXIT_OK
    assert outputs(dirs) == ["clip_00001_.webp"]
    with Image.open(dirs / "output" / "clip_00001_.webp") as image:
        assert image.n_frames == 5 and image.size == (40, 24)
    from wanflow.nodes.video_files import read_video_metadata

    meta = read_video_metadata(dirs / "output" / "clip_00001_.webp")
    assert meta["workflow"] == flow
    assert meta["prompt"]["3"]["inputs"]["images"] == ["1", 0]  # the reroute is gone


def test_api_workflow_and_set_override(dirs):
    api = {"1": {"class_type": "LoadImage", "inputs": {"image": "still.png"}},
           "9": {"class_type": "WanFlowSaveVideo", "_meta": {"title": "Save"},
                 "inputs": {"images": ["1", 0], "filename_prefix": "a", "format": "png", "fps": 8.0, "quality": 90}}}
    assert run_cli(dirs, api, "--set", "Save.filename_prefix=sub/b", "--set", "9.format=mp4") == 0
    assert outputs(dirs) == ["sub/b_00001_.mp4"]
    with av.open(str(dirs / "output" / "sub" / "b_00001_.mp4")) as container:
        assert container.streams.video[0].frames in (0, 1)
        assert len(list(container.decode(video=0))) == 1


def test_muted_and_bypassed_nodes(dirs):
    flow = load_save_ui()
    # A bypassed node between LoadImage and the reroute passes its IMAGE input through.
    flow["nodes"].append(ui_node(5, "WanFlowSaveVideo", ["x", "png", 16.0, 90], mode=4,
                                 inputs=[{"name": "images", "type": "IMAGE", "link": 3}],
                                 outputs=[]))
    flow["links"].append([3, 1, 0, 5, 0, "IMAGE"])
    flow["nodes"][0]["outputs"][0]["links"] = [1, 3]
    prompt = workflow.ui_to_prompt(flow, node_classes())
    assert set(prompt) == {"1", "3"}
    # Muting the loader leaves the save node without its required input: a clear error, exit 3.
    flow["nodes"][0]["mode"] = 2
    assert run_cli(dirs, flow) == errors.EXIT_INVALID
    assert outputs(dirs) == []


def test_primitive_node_value_feeds_widget(dirs):
    flow = load_save_ui()
    flow["nodes"].append(ui_node(6, "PrimitiveNode", ["from_primitive"],
                                 outputs=[{"name": "STRING", "type": "STRING", "links": [4],
                                           "widget": {"name": "filename_prefix"}}]))
    flow["nodes"][2]["inputs"].append({"name": "filename_prefix", "type": "STRING", "link": 4,
                                       "widget": {"name": "filename_prefix"}})
    flow["links"].append([4, 6, 0, 3, 1, "STRING"])
    assert run_cli(dirs, flow) == 0
    assert outputs(dirs) == ["from_primitive_00001_.webp"]


@pytest.mark.parametrize("breakage, code, message", [
    (lambda f: f["nodes"].append(ui_node(7, "NoSuchNode")), errors.EXIT_INVALID,
     "node 7 (NoSuchNode): unknown node type 'NoSuchNode'"),
    (lambda f: f["nodes"][0]["widgets_values"].__setitem__(0, "missing.png"), errors.EXIT_MISSING_FILE,
     "node 1 (LoadImage): LoadImage: image: 'missing.png' not found"),
    (lambda f: f["nodes"][0]["widgets_values"].__setitem__(0, "../input/still.png"), errors.EXIT_INVALID,
     "node 1 (LoadImage): LoadImage: image: '../input/still.png' contains '..'"),
    (lambda f: f["nodes"][0]["widgets_values"].__setitem__(0, "/etc/passwd"), errors.EXIT_INVALID,
     "node 1 (LoadImage): LoadImage: image: '/etc/passwd' is an absolute path"),
    (lambda f: f["nodes"][2]["widgets_values"].__setitem__(0, "../out"), errors.EXIT_INVALID,
     "node 3 (WanFlowSaveVideo): save video: filename_prefix: '../out' contains '..'"),
    (lambda f: f["nodes"][2]["widgets_values"].__setitem__(0, "/absolute/out"), errors.EXIT_INVALID,
     "node 3 (WanFlowSaveVideo): save video: filename_prefix: '/absolute/out' is an absolute path"),
    (lambda f: f["links"].__setitem__(0, [1, 1, 1, 2, 0, "MASK"]), errors.EXIT_INVALID,
     "node 3 (WanFlowSaveVideo): wrong link type: input 'images' expects IMAGE, but node 1 (LoadImage) output 1 "
     "gives MASK"),
    (lambda f: f["nodes"][2]["widgets_values"].__setitem__(1, "gif"), errors.EXIT_INVALID,
     "node 3 (WanFlowSaveVideo): widget 'format': 'gif' is not one of"),
    (lambda f: f["nodes"][2]["widgets_values"].__setitem__(2, 0), errors.EXIT_INVALID,
     "node 3 (WanFlowSaveVideo): widget 'fps': 0 is outside [1.0, 120.0]"),
    (lambda f: f["nodes"][2]["widgets_values"].append(1), errors.EXIT_INVALID,
     "node 3 (WanFlowSaveVideo): widgets_values has 5 entries, expected 4"),
    (lambda f: f["nodes"].pop(2), errors.EXIT_INVALID, "no output node"),
])
def test_bad_workflows_fail_clearly_and_write_nothing(dirs, capsys, breakage, code, message):
    flow = load_save_ui()
    breakage(flow)
    assert run_cli(dirs, flow) == code
    err = capsys.readouterr().err
    assert message in err, err
    assert outputs(dirs) == []


def test_bad_output_prefix_fails_before_any_node_runs(dirs, capsys):
    """The prefix is checked with the other inputs, not after the (long) nodes before the save ran."""
    (dirs / "input" / "broken.png").write_bytes(b"not an image")  # would fail at run time (exit 5)
    flow = load_save_ui("broken.png", prefix="../escape")
    assert run_cli(dirs, flow) == errors.EXIT_INVALID
    assert "node 3 (WanFlowSaveVideo): save video: filename_prefix: '../escape'" in capsys.readouterr().err
    assert outputs(dirs) == []


def test_node_failure_at_run_time_writes_nothing(dirs, capsys):
    (dirs / "input" / "broken.png").write_bytes(b"not an image")
    flow = load_save_ui("broken.png")
    assert run_cli(dirs, flow) == errors.EXIT_NODE_FAILED
    assert "node 1 (LoadImage)" in capsys.readouterr().err
    assert outputs(dirs) == []


def test_failure_after_a_save_discards_it(dirs):
    """Two outputs: the first writes, the second fails; nothing may remain."""
    api = {"1": {"class_type": "LoadImage", "inputs": {"image": "still.png"}},
           "2": {"class_type": "LoadImage", "inputs": {"image": "still.png"}},
           "3": {"class_type": "WanFlowSaveVideo",
                 "inputs": {"images": ["1", 0], "filename_prefix": "ok", "format": "png", "fps": 8.0, "quality": 90}},
           "4": {"class_type": "WanFlowSaveVideo",
                 "inputs": {"images": ["2", 0], "filename_prefix": "bad", "format": "mp4", "fps": 8.0, "quality": 90}}}
    (dirs / "input" / "still.png").write_bytes(b"corrupt after validation")  # exists, so validation passes
    api["1"]["inputs"]["image"] = "frames.webp"
    assert run_cli(dirs, api) == errors.EXIT_NODE_FAILED
    assert not (dirs / "output").exists()  # no staging folder, and no output folder the run created


def test_usage_errors(dirs, capsys):
    assert cli.main(["run", str(dirs / "nope.json"), "--quiet"]) == errors.EXIT_USAGE
    (dirs / "bad.json").write_text("{not json")
    assert cli.main(["run", str(dirs / "bad.json"), "--quiet"]) == errors.EXIT_USAGE
    assert run_cli(dirs, load_save_ui(), "--set", "99.x=1") == errors.EXIT_USAGE
    assert run_cli(dirs, load_save_ui(), "--set", "3.nope=1") == errors.EXIT_USAGE
    assert "WanFlowSaveVideo has no input 'nope'" in capsys.readouterr().err
    assert cli.main(["frobnicate"]) == errors.EXIT_USAGE
    assert outputs(dirs) == []


def test_cycle_is_reported():
    class Passthrough:
        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "go"
        OUTPUT_NODE = True

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"images": ("IMAGE",)}}

    prompt = {"1": {"class_type": "P", "inputs": {"images": ["2", 0]}},
              "2": {"class_type": "P", "inputs": {"images": ["1", 0]}}}
    with pytest.raises(errors.InvalidWorkflow, match="cycle"):
        execute.validate(prompt, {"P": Passthrough})


def test_link_consistency_checked():
    flow = load_save_ui()
    bad = copy.deepcopy(flow)
    bad["links"][1] = [2, 2, 0, 3, 5, "IMAGE"]
    with pytest.raises(errors.InvalidWorkflow, match="link 2 says it ends at node 3 slot 5"):
        workflow.ui_to_prompt(bad, node_classes())
    bad = copy.deepcopy(flow)
    bad["nodes"][2]["inputs"][0]["link"] = 77
    with pytest.raises(errors.InvalidWorkflow, match="link 77"):
        workflow.ui_to_prompt(bad, node_classes())


def test_subgraphs_and_core_nodes_get_a_clear_error(dirs, capsys):
    flow = load_save_ui()
    flow["definitions"] = {"subgraphs": [{"id": "0b4c-uuid", "nodes": [], "links": []}]}
    flow["nodes"].append(ui_node(8, "0b4c-uuid"))
    assert run_cli(dirs, flow) == errors.EXIT_INVALID
    assert "subgraph" in capsys.readouterr().err
    api = {"1": {"class_type": "KSampler", "inputs": {}}}
    assert run_cli(dirs, api) == errors.EXIT_INVALID
    assert "need ComfyUI itself" in capsys.readouterr().err


def test_nodes_no_output_needs_are_not_checked_but_bad_links_are(dirs):
    api = {"1": {"class_type": "LoadImage", "inputs": {"image": "still.png"}},
           "2": {"class_type": "WanFlowSaveVideo",
                 "inputs": {"images": ["1", 0], "filename_prefix": "a", "format": "png", "fps": 8.0, "quality": 90}},
           "3": {"class_type": "WanFlowVAEDecode", "inputs": {}}}  # unconnected leftover: ignored, as in ComfyUI
    assert run_cli(dirs, api) == errors.EXIT_OK
    api["2"]["inputs"]["images"] = ["7", 0]
    assert run_cli(dirs, api) == errors.EXIT_INVALID


@pytest.mark.parametrize("breakage, message", [
    (lambda f: f["nodes"][2]["widgets_values"].__setitem__(2, float("nan")), "widget 'fps': expected a finite number"),
    (lambda f: f["nodes"][2]["widgets_values"].__setitem__(3, float("inf")), "widget 'quality': expected a finite"),
    (lambda f: f["nodes"].__setitem__(1, ["not", "a node"]), "malformed node ['not', 'a node']"),
    (lambda f: f["nodes"][2].__setitem__("type", ["WanFlowSaveVideo"]), "expected an object with an id and a type"),
    (lambda f: f["nodes"][2].__setitem__("inputs", {"images": 2}), "inputs must be a list of slots"),
    (lambda f: f["links"].__setitem__(0, [1, 1, "0", 2, 0, "IMAGE"]), "malformed link [1, 1, '0', 2, 0, 'IMAGE']"),
    (lambda f: f["nodes"][2]["inputs"][0].__setitem__("link", "two"), "input 0 has link 'two'; expected a link id"),
    (lambda f: f["nodes"][2]["inputs"][0].__setitem__("link", float("inf")), "input 0 has link inf; expected"),
    (lambda f: f["nodes"][2].__setitem__("widgets_values", 7), "malformed workflow JSON (TypeError"),
])
def test_wrong_json_types_in_a_ui_workflow_are_invalid(dirs, capsys, breakage, message):
    flow = load_save_ui()
    breakage(flow)
    assert run_cli(dirs, flow) == errors.EXIT_INVALID
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert outputs(dirs) == []


@pytest.mark.parametrize("entry, message", [
    ({"class_type": ["LoadImage"], "inputs": {}}, "API entry '1' has no class_type"),
    ({"class_type": "LoadImage", "inputs": ["still.png"]}, "API entry '1' has inputs of type list"),
])
def test_wrong_json_types_in_an_api_prompt_are_invalid(dirs, capsys, entry, message):
    assert run_cli(dirs, {"1": entry}) == errors.EXIT_INVALID
    assert message in capsys.readouterr().err


def test_a_malformed_link_in_an_api_prompt_is_invalid_not_a_node_failure(dirs, capsys):
    api = {"1": {"class_type": "LoadImage", "inputs": {"image": "still.png"}},
           "3": {"class_type": "WanFlowSaveVideo",
                 "inputs": {"images": ["1", "0"], "filename_prefix": "x", "format": "png", "fps": 8.0, "quality": 90}}}
    assert run_cli(dirs, api) == errors.EXIT_INVALID
    assert "input 'images' takes a link from a IMAGE output, found ['1', '0']" in capsys.readouterr().err


def test_unreadable_workflow_files_are_usage_errors(dirs, capsys):
    (dirs / "latin1.json").write_bytes('{"title": "caf\xe9"}'.encode("latin-1"))
    assert cli.main(["run", str(dirs / "latin1.json"), "--quiet"]) == errors.EXIT_USAGE
    assert "is not UTF-8 text" in capsys.readouterr().err
    (dirs / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    assert cli.main(["run", str(dirs / "deep.json"), "--quiet"]) == errors.EXIT_USAGE
    assert "nests JSON too deeply" in capsys.readouterr().err
    assert cli.main(["run", "x" * 1_000_000 + ".json", "--quiet"]) == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert "cannot read workflow xxx" in err and len(err) < 500


def test_a_chain_of_thousands_of_nodes_validates_without_recursion():
    class Passthrough:
        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "go"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"images": ("IMAGE",)}}

    class Source(Passthrough):
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

    class Sink(Passthrough):
        OUTPUT_NODE = True

    count = 5000
    prompt = {"0": {"class_type": "S", "inputs": {}}}
    prompt.update({str(i): {"class_type": "P", "inputs": {"images": [str(i - 1), 0]}} for i in range(1, count)})
    prompt[str(count)] = {"class_type": "K", "inputs": {"images": [str(count - 1), 0]}}
    order = execute.validate(prompt, {"S": Source, "P": Passthrough, "K": Sink})
    assert order == [str(i) for i in range(count + 1)]


@pytest.mark.parametrize("extra, message", [
    (("--device", "nonsense"), "--device: 'nonsense' is not a device; expected cpu, cuda"),
    (("--device", "cuda:7"), "--device: 'cuda:7'"),
])
def test_bad_device_is_a_usage_error(dirs, capsys, extra, message):
    assert run_cli(dirs, load_save_ui(), *extra) == errors.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_output_that_is_a_file_is_a_usage_error_and_stays_untouched(dirs, capsys):
    target = dirs / "output"
    target.write_text("my notes")
    path = dirs / "flow.json"
    path.write_text(json.dumps(load_save_ui()))
    assert cli.main(["run", str(path), "--input", str(dirs / "input"), "--output", str(target), "--quiet"]) \
        == errors.EXIT_USAGE
    assert "is a file; expected a folder" in capsys.readouterr().err
    assert target.read_text() == "my notes"
    assert cli.main(["demo", "--output", str(target), "--quiet"]) == errors.EXIT_USAGE
    assert target.read_text() == "my notes"


def test_a_null_widget_value_is_invalid_not_skipped(dirs, capsys):
    """A literal null is no value (``lora_high: null`` once passed the file check as a linked input
    and silently applied no LoRA); every node input gets the same check."""
    api = {"2": {"class_type": "LoadImage", "inputs": {"image": "still.png"}},
           "3": {"class_type": "WanFlowSaveVideo",
                 "inputs": {"images": ["2", 0], "filename_prefix": "x", "format": "png", "fps": 8.0, "quality": 90}}}
    api["3"]["inputs"]["fps"] = None
    assert run_cli(dirs, api) == errors.EXIT_INVALID
    assert "node 3 (WanFlowSaveVideo): input 'fps' is null" in capsys.readouterr().err


def test_a_graph_saved_before_a_widget_existed_runs_with_its_default(dirs):
    """As in ComfyUI: trailing widgets missing from widgets_values take their defaults."""
    flow = load_save_ui()
    flow["nodes"][2]["widgets_values"].pop()  # the quality widget, as if saved by an older version
    assert run_cli(dirs, flow) == errors.EXIT_OK
    assert outputs(dirs) == ["clip_00001_.webp"]
