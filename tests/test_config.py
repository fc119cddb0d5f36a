"""TrainConfig: the one record of the training settings, field for flag, and what a resume does with each."""
from __future__ import annotations

from dataclasses import FrozenInstanceError, replace

import pytest

from dsrnet.train.config import SETTINGS, TrainConfig
from dsrnet.train.resume import note_overrides
from solver import build_parser, given_flags, parse_args


def test_every_flag_is_a_field_with_the_flags_default_in_the_flags_order():
    for scale in (2, 3):
        parsed = vars(build_parser(scale).parse_args([]))
        assert tuple(parsed) == SETTINGS  # the order of a checkpoint's config keys
        assert parsed == replace(TrainConfig(), scale=scale).to_dict()


def test_the_record_round_trips_and_refuses_assignment():
    cfg = parse_args(["--lr", "3e-4", "--valid_data_dir", "a", "b", "--amp", "--gate", "learned", "--ema", "0.9"])
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert tuple(cfg.to_dict()) == SETTINGS
    with pytest.raises(FrozenInstanceError):
        cfg.lr = 1e-3


def test_an_old_records_missing_settings_take_their_defaults_and_unknown_ones_are_dropped():
    old = {k: v for k, v in parse_args(["--lr", "3e-4"]).to_dict().items() if k not in ("ema", "gate_penalty")}
    cfg = TrainConfig.from_dict({**old, "authors_only": 1})
    assert (cfg.lr, cfg.ema, cfg.gate_penalty) == (3e-4, 0.0, 0.0)
    assert cfg.to_dict().keys() == TrainConfig().to_dict().keys()


def test_given_flags_are_those_on_the_command_line_and_the_parser_is_left_as_it_was():
    parser = build_parser()
    assert given_flags(parser, []) == set()
    assert given_flags(parser, ["--lr", "1e-4", "--no-valid_data_dir", "--checkpoint_every", "3", "--resume"]) == {
        "lr", "valid_data_dir", "print_interval", "resume"}
    assert vars(parser.parse_args([])) == TrainConfig().to_dict()


def test_defaults_then_checkpoint_then_command_line():
    """Inherited settings come from the checkpoint unless given; where the run lives, the entry point's scale
    and how a new run starts never do."""
    saved = TrainConfig(scale=3, ckpt_dir="there", lr=5e-4, max_steps=10, init_from="w.pth", seed=7)
    cfg = TrainConfig(scale=2, ckpt_dir="here", max_steps=20).resumed_from(saved, {"max_steps"})
    assert cfg == TrainConfig(scale=2, ckpt_dir="here", lr=5e-4, max_steps=20, seed=7)


def test_the_tags_decide_how_a_changed_setting_is_noted(capsys):
    """A recipe change breaks the match with an uninterrupted run, another is noted plainly; a network setting
    (refused by the resume itself) and one not inherited are never noted."""
    saved = TrainConfig()
    cfg = replace(saved, lr=2e-4, gate="learned", max_steps=5, keep_last=1, group=2, init_from="w.pth")
    note_overrides(saved, cfg, {"lr", "gate", "max_steps", "keep_last", "group", "init_from"})
    assert capsys.readouterr().out.splitlines() == [
        "note: resuming with changed --gate sample -> learned, --lr 0.0001 -> 0.0002: the run no longer matches an "
        "uninterrupted one",
        "note: resuming with --keep_last 5 -> 1, --max_steps 600000 -> 5 (every other flag as the checkpoint "
        "recorded it)"]
