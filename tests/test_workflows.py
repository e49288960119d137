"""The templates in workflows/: well-formed UI JSON that matches the node classes, and they run.

Structure checks read the JSON files as a user's ComfyUI would; the end-to-end checks run each
template headless on the tiny models (runner/tiny_models.py) and check the video that comes out.
"""
import json
from pathlib import Path

import av
import pytest
import torch

from wanflow.nodes import comfy_adapter as ca
from wanflow.runner import execute, node_specs, template_layout, templates, tiny_runs, workflow
from wanflow.runner.registry import node_classes
from wanflow.runner.tiny_models import FILES as TINY_FILES, write_tiny_models
from wanflow.runner.workflow import UI_ONLY_TYPES, load_workflow

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "workflows").glob("*.json"))
CLASSES = node_classes()


def load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_every_template_is_shipped_and_up_to_date():
    assert [p.stem for p in FILES] == sorted(templates.TEMPLATES)
    for path in FILES:  # the template browser shows <name>.jpg next to the JSON
        from PIL import Image

        with Image.open(path.with_suffix(".jpg")) as picture:
            assert picture.format == "JPEG" and picture.size == (512, 288)
    for name in templates.TEMPLATES:
        text = (ROOT / "workflows" / f"{name}.json").read_text(encoding="utf-8")
        assert text == templates.as_text(templates.render(name)), \
            f"{name}.json is stale: run python -m wanflow.runner.templates"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_template_structure(path):
    flow = load(path)
    assert flow["version"] == 0.4
    nodes = {node["id"]: node for node in flow["nodes"]}
    assert len(nodes) == len(flow["nodes"]) and flow["last_node_id"] >= max(nodes)
    links = {link[0]: link for link in flow["links"]}
    assert len(links) == len(flow["links"]) and flow["last_link_id"] >= max(links, default=0)
    for node in nodes.values():
        assert node["type"] in CLASSES or node["type"] in UI_ONLY_TYPES, f"unknown node type {node['type']}"
    for link_id, origin, origin_slot, target, target_slot, kind in flow["links"]:
        source, sink = nodes[origin], nodes[target]
        assert link_id in (source["outputs"][origin_slot]["links"] or [])
        assert source["outputs"][origin_slot]["type"] == kind
        assert kind == CLASSES[source["type"]].RETURN_TYPES[origin_slot]
        slot = sink["inputs"][target_slot]
        assert slot["link"] == link_id
        spec = {s.name: s for s in node_specs.input_specs(CLASSES[sink["type"]])}[slot["name"]]
        assert node_specs.types_match(kind, spec.type), f"link {link_id}: {kind} into {slot['name']} ({spec.type})"
    for node in nodes.values():
        for slot in node.get("inputs", []):
            assert slot["link"] is None or slot["link"] in links
        for output in node.get("outputs", []):
            for link_id in output["links"] or []:
                assert links[link_id][1] == node["id"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_widgets_values_line_up(path):
    for node in load(path)["nodes"]:
        if node["type"] in UI_ONLY_TYPES:
            continue
        cls = CLASSES[node["type"]]
        values = node["widgets_values"]
        assert len(values) == node_specs.widgets_values_length(cls), node["type"]
        position = 0
        for spec in node_specs.widget_specs(cls):
            value = values[position]
            if spec.type == "INT":
                assert isinstance(value, int) and not isinstance(value, bool), (node["type"], spec.name, value)
            elif spec.type == "FLOAT":
                assert isinstance(value, (int, float)) and not isinstance(value, bool), (node["type"], spec.name)
            elif spec.type == "BOOLEAN":
                assert isinstance(value, bool)
            elif spec.type == "STRING":
                assert isinstance(value, str)
            elif spec.is_combo and spec.name not in _file_widgets(cls):
                assert value in spec.type, (node["type"], spec.name, value)
            if spec.type in ("INT", "FLOAT"):
                low, high = spec.options.get("min"), spec.options.get("max")
                assert (low is None or value >= low) and (high is None or value <= high), (node["type"], spec.name)
            if spec.extra_values:
                extra = values[position + 1]
                assert extra in node_specs.CONTROL_VALUES if spec.type == "INT" else extra == "image"
            position += 1 + spec.extra_values


def _file_widgets(cls):
    """Combos of file names: the template names the official file, which need not be installed here."""
    method = getattr(cls, "VALIDATE_INPUTS", None)
    return set(method.__code__.co_varnames[1:method.__code__.co_argcount]) if method else set()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_note_names_every_model_file_and_folder(path):
    flow = load(path)
    notes = " ".join(n["widgets_values"][0] for n in flow["nodes"] if n["type"] in ("Note", "MarkdownNote"))
    for node in flow["nodes"]:
        for model in node.get("properties", {}).get("models", []):
            assert f"[{model['name']}]({model['url']})" in notes and f"`models/{model['directory']}/`" in notes
            assert model["url"].startswith("https://huggingface.co/") and model["url"].endswith(model["name"])


def test_official_defaults():
    t2v = {n["id"]: n for n in load(ROOT / "workflows" / "wan22_a14b_t2v.json")["nodes"]}
    assert t2v[8]["widgets_values"][2:9] == [40, 12.0, "unipc", "unipc", 4.0, 3.0, 0.0]
    assert t2v[7]["widgets_values"][:3] == [1280, 720, 81]
    ti2v = {n["id"]: n for n in load(ROOT / "workflows" / "wan22_ti2v_5b.json")["nodes"]}
    assert ti2v[7]["widgets_values"] == [1280, 704, 121] and ti2v[10]["widgets_values"][2] == 24.0
    lora = {n["id"]: n for n in load(ROOT / "workflows" / "wan22_a14b_lora_stack_4step.json")["nodes"]}
    assert lora[8]["widgets_values"][2:8] == [4, 5.0, "distilled", "distilled", 1.0, 1.0]
    # The note promises the experts switch after 2 of the 4 steps (the T2V boundary, 0.875).
    from wanflow.samplers.schedules import build_schedule

    assert "switching experts after 2 steps" in lora[1]["widgets_values"][0]
    assert int((build_schedule("distilled", 4, 5.0).timesteps >= 875).sum()) == 2


OFFICIAL = {  # template -> the model whose official settings (model_loaders/detect.py) it uses
    "wan22_a14b_t2v": ("2.2", "t2v", "14B"),
    "wan22_a14b_i2v": ("2.2", "i2v", "14B"),
    "wan22_ti2v_5b": ("2.2", "ti2v", "5B"),
    "wan21_vace_r2v": ("2.1", "vace", "14B"),
    "wan22_a14b_vace_r2v": ("2.2", "vace", "14B"),  # Wan2.2-VACE-Fun-A14B: its authors' settings
    "wan22_a14b_flf2v": "fun-inp",                   # Wan2.2-Fun-A14B-InP: its authors' settings
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_widget_defaults_are_the_official_settings(name):
    """Steps, shift, guidance per expert, solver, size, frames and fps against the variant's official table."""
    from wanflow.model_loaders.detect import FUN_INP_DEFAULTS, official_defaults

    defaults = FUN_INP_DEFAULTS if OFFICIAL[name] == "fun-inp" else official_defaults(*OFFICIAL[name])
    nodes = {n["id"]: n for n in load(ROOT / "workflows" / f"{name}.json")["nodes"]}
    widgets = {nid: node_specs.map_widgets_values(CLASSES[n["type"]], n["widgets_values"], name)
               for nid, n in nodes.items() if n["type"] not in UI_ONLY_TYPES}
    by_type = {nodes[nid]["type"]: values for nid, values in widgets.items()}
    sampler, save = by_type["WanFlowMoESampler"], by_type["WanFlowSaveVideo"]
    size = next(v for t, v in by_type.items() if t in ("WanFlowEmptyVideoLatent", "WanFlowImageToVideo",
                                                        "WanFlowReferenceToVideo"))
    assert (sampler["steps"], sampler["shift"]) == (defaults.steps, defaults.shift)
    assert sampler["solver"] == sampler["scheduler"] == defaults.solver
    assert sampler["cfg_high"] == defaults.guide_scale
    assert sampler["cfg_low"] == (defaults.guide_scale_low_noise or defaults.guide_scale)
    assert sampler["boundary"] == 0.0 and sampler["denoise"] == 1.0  # 0 = the variant's own boundary
    assert (size["width"], size["height"]) in defaults.sizes and size["length"] == defaults.frames
    assert save["fps"] == defaults.fps


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_converts_to_a_prompt(path):
    prompt = load_workflow(load(path), CLASSES, path.name).prompt
    assert all(entry["class_type"] in CLASSES for entry in prompt.values())
    assert any(getattr(CLASSES[e["class_type"]], "OUTPUT_NODE", False) for e in prompt.values())


# --------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_tiny_models(root / "models")
    tiny_runs.write_input_images(root / "input")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on shared cores
    yield root
    torch.set_num_threads(threads)
    ca.configure_headless(None, None, None)
    ca._headless.models_dir = None


@pytest.mark.parametrize("name", sorted(templates.TEMPLATES))
def test_template_runs_end_to_end_on_tiny_models(tiny_setup, name):
    out = tiny_setup / "output" / name
    ca.configure_headless(tiny_setup / "models", tiny_setup / "input", out)
    ca.set_headless_progress(False)
    result = tiny_runs.run_template_on_tiny_models(name, tiny_setup / "models", tiny_setup / "input")
    assert len(result.files) == 1 and result.files[0].suffix == ".mp4"
    with av.open(str(result.files[0])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert "workflow" in container.metadata and "prompt" in container.metadata
    assert len(frames) == tiny_runs.TINY_LENGTH
    assert frames[0].shape == (tiny_runs.TINY_HEIGHT, tiny_runs.TINY_WIDTH, 3)


def test_missing_model_file_fails_before_running(tiny_setup, capsys):
    """The official file names are not in the tiny folder: exit 4 naming file and folder, nothing written."""
    from wanflow.runner import cli, errors

    out = tiny_setup / "output" / "missing"
    code = cli.main(["run", str(ROOT / "workflows" / "wan22_a14b_t2v.json"), "--models", str(tiny_setup / "models"),
                     "--input", str(tiny_setup / "input"), "--output", str(out), "--quiet"])
    assert code == errors.EXIT_MISSING_FILE
    err = capsys.readouterr().err
    assert "4 files are missing" in err, err       # all at once: both experts, the text encoder, the VAE
    for name, folder in (("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "diffusion_models"),
                         ("wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "diffusion_models"),
                         ("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders"),
                         ("wan_2.1_vae.safetensors", "vae")):
        assert f"'{name}' not found in {folder}" in err, err
    assert not out.exists()


def test_a_size_the_model_cannot_take_is_rounded_and_shown_on_the_node(tiny_setup):
    """Sizes follow one rule on every node (nodes/sizes.py): rounded, with a note, never a late failure."""
    ca.configure_headless(tiny_setup / "models", tiny_setup / "input", tiny_setup / "output" / "rounded")
    ca.set_headless_progress(False)
    result = templates.run_with_overrides("wan22_a14b_i2v", tiny_runs.TINY_OVERRIDES["wan22_a14b_i2v"]
                                          + ["7.width=40", "7.length=7"])
    assert result.ui["7"]["text"] == ["32x32, 5 frames (40x32 rounded: the model needs multiples of 16; "
                                      "7 frames rounded down to 5: the model needs 4n+1)"]
    assert result.files


def _run_without_image_links(tiny_setup, name: str, links: tuple[str, ...]):
    """Template ``name`` on the tiny models with ``links`` of node 7 (Image to Video) disconnected."""
    ca.configure_headless(tiny_setup / "models", tiny_setup / "input", tiny_setup / "output" / f"{name}_without")
    ca.set_headless_progress(False)
    classes = node_classes()
    flow = workflow.load_workflow(templates.render(name, classes), classes, name)
    workflow.apply_overrides(flow.prompt, tiny_runs.TINY_OVERRIDES[name], classes)
    for link in links:
        del flow.prompt["7"]["inputs"][link]
    return execute.run(flow, classes)


def test_first_last_frame_template_runs_with_the_end_image_alone(tiny_setup):
    """Wan 2.2 I2V-A14B / Fun-InP take an end image without a start image (as ComfyUI's
    WanFirstLastFrameToVideo does); with neither, the graph check names the node before loading."""
    from wanflow.runner import errors

    result = _run_without_image_links(tiny_setup, "wan22_a14b_flf2v", ("start_image",))
    assert len(result.files) == 1
    with pytest.raises(errors.InvalidWorkflow, match=r"node 7 \(WanFlowImageToVideo\).*connect a start_image"):
        _run_without_image_links(tiny_setup, "wan22_a14b_flf2v", ("start_image", "end_image"))


def test_fun_5b_inp_runs_in_the_ti2v_template_from_a_start_and_an_end_image(tiny_setup):
    """Wan2.2-Fun-5B-InP loads where TI2V-5B does; Image to Video reads its kind from the weights and
    builds the mask + image-latent condition (start and end image) instead of TI2V's clean first frame."""
    ca.configure_headless(tiny_setup / "models", tiny_setup / "input", tiny_setup / "output" / "fun_5b_inp")
    ca.set_headless_progress(False)
    classes = node_classes()
    flow = workflow.load_workflow(templates.render("wan22_ti2v_5b", classes), classes, "wan22_ti2v_5b")
    overrides = [o.replace(TINY_FILES.ti2v, TINY_FILES.fun_inp_5b) for o in tiny_runs.TINY_OVERRIDES["wan22_ti2v_5b"]]
    assert overrides != tiny_runs.TINY_OVERRIDES["wan22_ti2v_5b"]
    workflow.apply_overrides(flow.prompt, overrides, classes)
    flow.prompt["7"]["inputs"]["end_image"] = list(flow.prompt["7"]["inputs"]["start_image"])
    result = execute.run(flow, classes)
    assert len(result.files) == 1


SWAPPED_MODELS = [
    ("wan22_a14b_t2v", {"i2v_high": ("t2v_high",), "i2v_low": ("t2v_low",)}, "node 8 (WanFlowMoESampler)",
     "an image-to-video model, but its conditioning is text conditioning"),
    ("wan22_a14b_i2v", {"t2v_high": ("i2v_high",), "t2v_low": ("i2v_low",)}, "node 7 (WanFlowImageToVideo)",
     "is a text-to-video model and takes no image"),
    ("wan22_a14b_i2v", {"i2v_clip": ("i2v_high",)}, "node 7 (WanFlowImageToVideo)", "needs CLIP vision features"),
    ("wan21_vace_r2v", {"t2v_high": ("vace",)}, "node 8 (WanFlowMoESampler)", "which has no VACE blocks"),
    ("wan21_phantom_s2v", {"vace": ("t2v_high",)}, "node 8 (WanFlowMoESampler)", "needs a Phantom-Wan model"),
    ("wan22_a14b_vace_r2v", {"t2v_low": ("vace_low",)}, "node 8 (WanFlowMoESampler)",
     "model_low is Wan 2.2 T2V-nano (low-noise expert), which has no VACE blocks"),
    ("wan22_a14b_vace_r2v", {"vace_low": ("vace_high",), "vace_high": ("vace_low",)}, "node 8 (WanFlowMoESampler)",
     "connect the high-noise expert to model_high"),
    ("wan22_a14b_t2v", {"t2v_low": ("t2v_high",), "t2v_high": ("t2v_low",)}, "node 8 (WanFlowMoESampler)",
     "connect the high-noise expert to model_high"),
]


@pytest.mark.parametrize("name, swap, where, message", SWAPPED_MODELS)
def test_a_model_of_the_wrong_kind_fails_from_its_header_before_any_weights_load(tiny_setup, capsys, monkeypatch,
                                                                                name, swap, where, message):
    """Issue 15: the variant is known from the header, so the graph is checked before loading (exit 3)."""
    from wanflow.model_loaders import storage
    from wanflow.runner import cli, errors
    from wanflow.runner.tiny_models import FILES

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were read before the graph check")

    monkeypatch.setattr(storage, "load_into", no_weights)
    monkeypatch.setattr("wanflow.model_loaders.dit_loader.load_into", no_weights)
    renames = {getattr(FILES, old): getattr(FILES, new) for new, olds in swap.items() for old in olds}
    sets = []
    for item in tiny_runs.TINY_OVERRIDES[name]:
        key, value = item.split("=", 1)
        sets += ["--set", f"{key}={renames.get(value, value)}"]
    out = tiny_setup / "output" / f"swapped_{name}"
    code = cli.main(["run", str(ROOT / "workflows" / f"{name}.json"), "--models", str(tiny_setup / "models"),
                     "--input", str(tiny_setup / "input"), "--output", str(out), "--quiet", *sets])
    err = capsys.readouterr().err
    assert code == errors.EXIT_INVALID, err
    assert where in err and message in err and "before loading" in err, err
    assert not out.exists()


# --------------------------------------------------------------------------- layout (issue 11)

def _rects(flow):
    return {node["id"]: template_layout.node_rect(node) for node in flow["nodes"]}


def _apart(a, b, gap):
    """Rectangles ``(x, y, w, h)`` at least ``gap`` apart horizontally or vertically."""
    return (a[0] + a[2] + gap <= b[0] or b[0] + b[2] + gap <= a[0]
            or a[1] + a[3] + gap <= b[1] or b[1] + b[3] + gap <= a[1])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_templates_open_tidy(path):
    """Nodes >= 40 px apart (title bars included), every node in one of the four groups, no link
    across more than half the graph, the note wide enough for its table, and the whole graph on a
    1920x1080 screen at a zoom where the frontend still draws text."""
    flow = load(path)
    rects = _rects(flow)
    ids = sorted(rects)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            assert _apart(rects[a], rects[b], 40), f"nodes {a} and {b} are closer than 40 px"
    titles = [group["title"] for group in flow["groups"]]
    assert titles[0] in ("Load models", "Load models and pictures") and titles[1:] == ["Prompt", "Sample",
                                                                                          "Decode and save"]
    for node in flow["nodes"]:
        if node["type"] in ("Note", "MarkdownNote"):
            continue
        x, y, w, h = rects[node["id"]]
        inside = [g["title"] for g in flow["groups"] if g["bounding"][0] <= x and x + w <= sum(g["bounding"][::2])
                  and g["bounding"][1] <= y and y + h <= g["bounding"][1] + g["bounding"][3]]
        assert len(inside) == 1, f"node {node['id']} is in groups {inside}"
    left, _, right, _ = template_layout.graph_bounds(rects.values(), flow["groups"])
    for _, source, _, target, _, _ in flow["links"]:
        span = rects[target][0] - (rects[source][0] + rects[source][2])
        assert span <= 0.5 * (right - left), f"link {source} -> {target} crosses {span:.0f} px"
    note = next(n for n in flow["nodes"] if n["type"] == "MarkdownNote")
    rows = [line for line in note["widgets_values"][0].splitlines() if line.startswith("|")]
    assert rows and all(template_layout._row_width(row) <= note["size"][0] for row in rows)
    view = flow["extra"]["ds"]
    assert template_layout.READABLE_SCALE <= view["scale"] <= 1.0
    screen_w, screen_h = (m + v for m, v in zip(template_layout.VIEW_MARGIN, template_layout.VIEWPORT))
    for x, y, w, h in [*rects.values(), *(g["bounding"] for g in flow["groups"])]:
        sx, sy = (x + view["offset"][0]) * view["scale"], (y + view["offset"][1]) * view["scale"]
        assert sx >= 0 and sy >= 0 and sx + w * view["scale"] <= screen_w + 1 and sy + h * view["scale"] <= screen_h + 1


def test_the_readme_table_lists_every_template_and_its_files():
    """README (issue 11): which files each template needs, in which folder, with links; generated."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = templates.files_table({name: templates.render(name) for name in templates.TEMPLATES})
    assert templates.readme_with_table(readme, table) == readme, "README table is stale: run " \
                                                                 "python -m wanflow.runner.templates"
    for name in templates.TEMPLATES:
        assert f"(`{name}.json`)" in table
    assert "[wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors](https://huggingface.co/" in table
