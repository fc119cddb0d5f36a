"""A report's settings name every sample.py flag that can change a score or an image, as the run resolved it."""
from pathlib import Path

import torch

import sample
from dsrnet.reports import SETTING_OF_FLAG, UNRECORDED_FLAGS, report_settings


def settings_for(argv: list[str]) -> dict:
    cfg = sample.parse_args(argv)
    sample.check_args(cfg)
    return report_settings(cfg, None, ["Set5"], None, scales=cfg.scale or [2], device=torch.device("cpu"),
                           weights=None)


def test_every_flag_is_recorded_or_excluded_with_a_reason():
    """A new flag fails here until it is recorded in the settings or listed, with its reason, as unable to
    change a score or an image."""
    dests = {a.dest for a in sample.build_parser()._actions}
    settings = settings_for([])
    missing = sorted(d for d in dests - set(UNRECORDED_FLAGS) if SETTING_OF_FLAG.get(d, d) not in settings)
    assert missing == []
    assert set(UNRECORDED_FLAGS) <= dests and set(SETTING_OF_FLAG) <= dests  # no stale names
    assert all(UNRECORDED_FLAGS.values())


def test_recorded_values_follow_the_flags():
    """The gate seed, the tile, the protocol and what it resolves, the scales and the device all land in the
    settings (the seed and the tile are what reports once lacked)."""
    s = settings_for(["--bicubic", "--scale", "3", "4", "--gate", "sample", "--seed", "7", "--tile", "64",
                      "--tile_overlap", "20", "--protocol", "basicsr", "--no_save"])
    assert (s["seed"], s["tile"], s["tile_overlap"], s["gate_mode"]) == (7, 64, 20, "sample")
    assert (s["protocol"], s["quantize"], s["scales"], s["bicubic"], s["device"]) == ("basicsr", "round", [3, 4],
                                                                                       True, "cpu")
    assert s["sr_dir"] is None and s["model"] == "dsrnet" and s["shave"] == "scale"
    d = settings_for(["--shave", "0", "--quantize", "round", "--sample_dir", "out"])
    assert (d["protocol"], d["quantize"], d["shave"], d["bicubic"]) == ("authors", "round", 0, False)
    assert d["sr_dir"] == str(Path("out", "bicubic").resolve())
    assert settings_for([])["quantize"] == "truncate"
