"""DSRNet: shapes, the authors' checkpoint mapped onto our blocks, equality with their forward, gate modes."""
import pytest
import torch

from model import GATE_MODES, CheckpointError, Net, load_checkpoint, read_checkpoint
from model.dsrnet import checkpoint_filter_fn
from model.reference import authors_gate_votes_fixed, reference_forward


@pytest.fixture(scope="module")
def authors_sd(weights_x2):
    return torch.load(weights_x2, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_shape(scale):
    net = Net(scale=scale).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 12, 17), scale).shape == (2, 3, 12 * scale, 17 * scale)
        assert net(torch.rand(1, 3, 9, 9)).shape == (1, 3, 9 * scale, 9 * scale)


def test_multi_scale():
    net = Net(scale=0, multi_scale=True).eval()
    with torch.no_grad():
        for s in (2, 3, 4):
            assert net(torch.rand(1, 3, 10, 11), s).shape == (1, 3, 10 * s, 11 * s)
    with pytest.raises(ValueError):
        net(torch.rand(1, 3, 10, 11))
    assert {k.split(".")[2] for k in net.state_dict() if k.startswith("construction.upsample")} == {"x2", "x3", "x4"}


def test_single_scale_rejects_other_scale():
    with pytest.raises(ValueError):
        Net(scale=2)(torch.rand(1, 3, 8, 8), 4)


def test_authors_checkpoint_every_tensor_accounted(authors_sd):
    assert len(authors_sd) == 35
    mapped = checkpoint_filter_fn(authors_sd)
    ours = Net(scale=2).state_dict()
    assert set(mapped) == set(ours)
    for k, v in mapped.items():
        assert v.shape == ours[k].shape, k


def test_load_checkpoint_and_param_count(weights_x2, authors_sd):
    net = load_checkpoint(weights_x2)
    assert not net.training and net.scale == 2
    assert sum(p.numel() for p in net.parameters()) == 934_602
    sd = checkpoint_filter_fn(authors_sd)
    for k, v in net.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert net.wide_enhancement.gate.fc2.bias.tolist() == pytest.approx([0.1, 2.0])


@pytest.mark.parametrize("mode", ["selected", "fixed"])
def test_equals_authors_forward(weights_x2, authors_sd, mode):
    net = load_checkpoint(weights_x2, gate_mode=mode)
    x = torch.rand(2, 3, 24, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = net(x, 2)
    ref = reference_forward(authors_sd, x, use_fixed=mode == "fixed", decide_on_host=True)
    assert (ours - ref).abs().max().item() < 1e-5


def test_argmax_mode_follows_the_gate_vote(weights_x2, authors_sd):
    net = load_checkpoint(weights_x2, gate_mode="argmax")
    x6 = torch.rand(3, 64, 8, 8, generator=torch.Generator().manual_seed(2))
    expected = "fixed" if authors_gate_votes_fixed(authors_sd, x6) else "selected"
    assert net.wide_enhancement.choose_branch(x6) == expected


def test_our_checkpoint_round_trip(weights_x2, tmp_path):
    net = load_checkpoint(weights_x2)
    path = tmp_path / "ours.pth"
    torch.save({"model": net.state_dict(), "scale": 2}, path)
    again = load_checkpoint(path)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), again(x))
    assert read_checkpoint(path)["format"] == "dsrnet"
    assert read_checkpoint(weights_x2)["format"] == "authors"


def authors_layout(scale: int) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of the authors' checkpoints, as their model defines them: flat ``convN.0`` names, the
    upsampler as ``upsample.up.body.N`` (a conv at every even N) for one scale, or ``up2``/``up3``/``up4``."""
    layout = {f"{m}_mean.shifter.{k}": shape for m in ("sub", "add") for k, shape in (("weight", (3, 3, 1, 1)),
                                                                                        ("bias", (3,)))}
    layout |= {"conv1.0.weight": (64, 3, 3, 3), "conv17.0.weight": (3, 64, 3, 3)}
    layout |= {f"conv{i}.0.weight": (64, 64, 3, 3) for i in range(2, 17)}
    layout |= {f"conv{i}_1.0.weight": (64, 64, 3, 3) for i in range(7, 11)}
    layout |= {f"conv{i}_2.0.weight": (64, 64, k, k) for i, k in ((7, 3), (8, 1), (9, 3), (10, 1))}
    layout |= {"gate.fc1.weight": (16, 64), "gate.fc1.bias": (16,), "gate.fc2.weight": (2, 16), "gate.fc2.bias": (2,)}
    stages = {2: [2], 3: [3], 4: [2, 2]}
    for name, s in [("up", scale)] if scale else [(f"up{s}", s) for s in (2, 3, 4)]:
        for j, r in enumerate(stages[s]):
            layout[f"upsample.{name}.body.{2 * j}.weight"] = (64 * r * r, 64, 3, 3)
            layout[f"upsample.{name}.body.{2 * j}.bias"] = (64 * r * r,)
    return layout


def test_authors_layout_is_their_x2_files(authors_sd):
    assert {k: tuple(v.shape) for k, v in authors_sd.items()} == authors_layout(2)


def _random_authors_file(path, scale: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(shape, generator=g) * 0.05 for k, shape in authors_layout(scale).items()}
    torch.save(sd, path)
    return sd


@pytest.mark.parametrize("scale", [3, 4, 0], ids=["x3", "x4", "multi-scale"])
def test_authors_layouts_load_strictly_with_the_scale_inferred(tmp_path, scale):
    """Every tensor of an authors' x3, x4 or multi-scale file finds its place (load_checkpoint refuses missing
    and unexpected keys), the scale is read from the upsampler, and each upsampler stage lands where it runs."""
    sd = _random_authors_file(tmp_path / "authors.pth", scale)
    net = load_checkpoint(tmp_path / "authors.pth")
    assert net.scale == scale and net.multi_scale == (scale == 0)
    assert read_checkpoint(tmp_path / "authors.pth")["format"] == "authors"
    assert torch.equal(net.wide_enhancement.selected_branch.convs[1].weight, sd["conv8_2.0.weight"])
    upsamplers = net.construction.upsample
    for key, tensor in sd.items():
        if key.startswith("upsample."):
            _, name, _, index, kind = key.split(".")
            module = upsamplers[f"x{name[2:]}"] if scale == 0 else upsamplers
            assert torch.equal(getattr(module.body[int(index)], kind), tensor), key


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_authors_multi_scale_file_runs_as_their_single_scale_one(tmp_path, scale):
    """A multi-scale file asked for xS computes what a single-scale file with the same body and ``up`` = ``upS``
    does: the scale picks the right upsampler."""
    multi = _random_authors_file(tmp_path / "multi.pth", 0, seed=1)
    single = {k: v for k, v in multi.items() if not k.startswith("upsample.")}
    single |= {k.replace(f"upsample.up{scale}.", "upsample.up."): v for k, v in multi.items()
               if k.startswith(f"upsample.up{scale}.")}
    torch.save(single, tmp_path / "single.pth")
    x = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(scale))
    with torch.no_grad():
        ms = load_checkpoint(tmp_path / "multi.pth", scale=scale)(x, scale)
        one = load_checkpoint(tmp_path / "single.pth")(x, scale)
    assert torch.equal(ms, one)


def test_scale_inferred_and_mismatch_refused(tmp_path):
    for s in (3, 4):
        torch.save(Net(scale=s).state_dict(), tmp_path / f"x{s}.pth")
        assert load_checkpoint(tmp_path / f"x{s}.pth").scale == s
    with pytest.raises(CheckpointError, match=r"holds a x4 model but x2 was asked"):
        load_checkpoint(tmp_path / "x4.pth", scale=2)
    torch.save(Net(multi_scale=True).state_dict(), tmp_path / "ms.pth")
    assert load_checkpoint(tmp_path / "ms.pth", scale=3).multi_scale


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pth")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="upsampler"):
        load_checkpoint(tmp_path / "other.pth")
    sd = Net(scale=2).state_dict()
    sd.pop("residual_enhancement.conv1.weight")
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "partial.pth")


def test_gate_modes_are_deterministic_or_seeded(weights_x2):
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    counts = {}
    for mode in GATE_MODES:
        net = load_checkpoint(weights_x2, gate_mode=mode, gate_seed=7)
        with torch.no_grad():
            for _ in range(40):
                net(x)
        counts[mode] = dict(net.router.branch_counts)
    assert counts["selected"] == {"selected": 40}
    assert counts["fixed"] == {"fixed": 40}
    assert len(counts["argmax"]) == 1  # noise-free: the same decision every time
    assert set(counts["sample"]) == {"fixed", "selected"}  # batch 1: mostly fixed, sometimes selected
    again = load_checkpoint(weights_x2, gate_mode="sample", gate_seed=7)
    with torch.no_grad():
        for _ in range(40):
            again(x)
    assert dict(again.router.branch_counts) == counts["sample"]


def test_sampled_gate_batch_rule(weights_x2):
    """At batch 1 the sampled gate picks 'fixed' most of the time; a batch of 64 almost never agrees on it."""
    net = load_checkpoint(weights_x2, gate_mode="sample", gate_seed=0)
    x6 = torch.rand(64, 64, 8, 8, generator=torch.Generator().manual_seed(0))
    single = [net.wide_enhancement.choose_branch(x6[:1]) for _ in range(400)]
    batch = [net.wide_enhancement.choose_branch(x6) for _ in range(50)]
    assert 0.75 < single.count("fixed") / 400 < 0.95
    assert batch.count("fixed") == 0


def test_gate_gets_no_gradient():
    net = Net(scale=2, gate_mode="sample").train()
    net(torch.rand(2, 3, 12, 12), 2).mean().backward()
    gate = net.wide_enhancement.gate
    assert gate.fc1.weight.grad is None and gate.fc2.weight.grad is None
    assert net.residual_enhancement.conv1.weight.grad is not None
    assert not any(p.requires_grad for p in net.sub_mean.parameters())


def test_default_inference_path_matches_eager(weights_x2, authors_sd):
    """The fast default (channels_last weights and input, inference_mode) computes what eager NCHW does."""
    from model.inference import image_to_tensor, super_resolve

    net = load_checkpoint(weights_x2)
    assert net.residual_enhancement.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    lr = (torch.rand(37, 29, 3, generator=torch.Generator().manual_seed(3)) * 255).byte().numpy()
    x = image_to_tensor(lr)
    assert x.is_contiguous(memory_format=torch.channels_last)
    fast = super_resolve(net, lr, 2)
    eager = reference_forward(authors_sd, x.contiguous(), use_fixed=False)[0]
    assert (fast - eager).abs().max().item() <= 1e-4
    tiled = super_resolve(net, lr, 2, tile=24, tile_overlap=8)  # overlap < receptive radius: close, not equal
    assert 1e-4 < (tiled - eager).abs().max().item() < 0.05  # exact tiling: tests/test_inference.py


def test_memory_layouts_compute_the_same(weights_x2):
    """sample.py's layout choice (NCHW for float32 on CUDA, channels_last elsewhere) leaves the output as it
    is, and super_resolve feeds the net its own layout (a mismatch would make cuDNN run the other kernels)."""
    from model.inference import super_resolve
    from model.precision import fast_memory_format, memory_format_of

    assert fast_memory_format("cuda") == torch.contiguous_format
    assert {fast_memory_format(d, p) for d, p in [("cpu", "fp32"), ("cpu", "bf16"), ("cuda", "tf32"),
                                                  ("cuda", "bf16")]} == {torch.channels_last}
    nchw = load_checkpoint(weights_x2, memory_format=torch.contiguous_format)
    nhwc = load_checkpoint(weights_x2)
    assert memory_format_of(nchw) == torch.contiguous_format and memory_format_of(nhwc) == torch.channels_last
    seen = []
    nchw.residual_enhancement.conv1.register_forward_pre_hook(lambda _, inp: seen.append(inp[0].is_contiguous()))
    lr = (torch.rand(33, 41, 3, generator=torch.Generator().manual_seed(5)) * 255).byte().numpy()
    assert (super_resolve(nchw, lr, 2) - super_resolve(nhwc, lr, 2)).abs().max().item() <= 1e-5
    assert seen == [True]


def test_cpu_bf16_check_reads_the_cpu_flags(tmp_path):
    from model.precision import cpu_flags_have_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse2 avx2 avx512f avx512_bf16\n")
    assert cpu_flags_have_bf16(info)
    info.write_text("processor : 0\nflags : fpu sse2 avx2 avx512f\n")
    assert not cpu_flags_have_bf16(info)
    assert not cpu_flags_have_bf16(tmp_path / "missing")


@pytest.mark.skipif(not hasattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported"), reason="torch lacks the oneDNN probe")
def test_cpu_flags_agree_with_torchs_bf16_probe():
    from pathlib import Path

    from model.precision import cpu_flags_have_bf16

    if not Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    assert cpu_flags_have_bf16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_torch_compile_traces_once():
    """The gate's branch count must stay out of the traced graph, or dynamo retraces on every call."""
    import torch._dynamo

    compiled = torch.compile(Net(scale=2).eval(), backend="eager", dynamic=False)
    try:
        with torch._dynamo.config.patch(error_on_recompile=True), torch.inference_mode():
            for _ in range(3):
                compiled(torch.rand(1, 3, 8, 8), 2)
    finally:
        torch._dynamo.reset()
