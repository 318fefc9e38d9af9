"""One meaning per option name across every `tok` command (issue 16, item 13): `-o/--output` is a DIR
or a FILE as its type says, `-t/--tokenizer` a tokenizer or codec spec, every short option has a long
name, and every command that runs a model takes `--device`."""

import click
import pytest

from speechtok.cli.main import cli


def commands(group: click.Group = cli, path: tuple[str, ...] = ()):
    """(name path, command) for every leaf command under `group`."""
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from commands(cmd, path + (name,))
        else:
            yield " ".join(path + (name,)), cmd


ALL = dict(commands())

# commands that run a model (a network's forward pass): each takes --device, default auto
RUNS_A_MODEL = {"train-kmeans", "encode", "decode", "resynth", "generate", "lm train", "acoustic train",
                "vocoder train", "eval resynth", "eval codecs", "eval generated", "eval lm", "align",
                "segment", "prosody train"}
# align and segment default to the CPU: with --jobs > 1 they fork CPU workers that share the loaded aligner
# (CUDA does not survive a fork); pocketsphinx, their default aligner, runs on the CPU only
DEVICE_DEFAULT_CPU = {"align", "segment"}
# no forward pass: import-kmeans and lm extend-vocab load weights only to save them (on the CPU), lm inspect
# reads a tokenizer, show, eval tokens and bpe train are numpy / tokenizers
RUNS_NO_MODEL = {"import-kmeans", "lm extend-vocab", "lm inspect", "show", "eval tokens", "bpe train"}


def option(cmd: click.Command, short: str) -> click.Option | None:
    return next((p for p in cmd.params if isinstance(p, click.Option) and short in p.opts), None)


def test_every_command_is_classified():
    assert len(ALL) >= 15, sorted(ALL)  # the walk reaches the subcommands of every group
    assert set(ALL) == RUNS_A_MODEL | RUNS_NO_MODEL, set(ALL) ^ (RUNS_A_MODEL | RUNS_NO_MODEL)
    assert not RUNS_A_MODEL & RUNS_NO_MODEL


@pytest.mark.parametrize("name", sorted(ALL))
def test_output_is_a_dir_or_a_file_as_its_type_says(name):
    o = option(ALL[name], "-o")
    if o is None:
        return
    assert o.opts == ["-o", "--output"], o.opts
    assert isinstance(o.type, click.Path), o.type
    assert (o.type.file_okay, o.type.dir_okay) in ((True, False), (False, True)), "a DIR or a FILE, not both"
    assert o.metavar == ("FILE" if o.type.file_okay else "DIR")
    assert ("file" if o.type.file_okay else "folder") in o.help.lower(), o.help  # the help says it too


def test_most_commands_write_with_o():
    with_o = [n for n, c in ALL.items() if option(c, "-o")]
    assert len(with_o) >= 15, with_o
    assert {"FILE", "DIR"} == {option(ALL[n], "-o").metavar for n in with_o}


@pytest.mark.parametrize("name", sorted(ALL))
def test_t_is_a_tokenizer_spec_and_short_options_have_long_names(name):
    cmd = ALL[name]
    t = option(cmd, "-t")
    if t is not None:
        assert t.opts == ["-t", "--tokenizer"], t.opts
        assert "tokenizer" in t.help.lower() or "codec" in t.help.lower(), t.help
    for p in cmd.params:
        if isinstance(p, click.Option) and any(len(o) == 2 for o in p.opts):
            assert any(o.startswith("--") for o in p.opts), (name, p.opts)


@pytest.mark.parametrize("name", sorted(RUNS_A_MODEL))
def test_commands_that_run_a_model_take_device(name):
    d = next((p for p in ALL[name].params if isinstance(p, click.Option) and "--device" in p.opts), None)
    assert d is not None, f"tok {name} has no --device"
    assert d.default == ("cpu" if name in DEVICE_DEFAULT_CPU else "auto")
    assert d.metavar == "DEVICE" and d.help


def test_eval_tokens_says_it_runs_no_model():
    cmd = ALL["eval tokens"]
    assert not any("--device" in p.opts for p in cmd.params if isinstance(p, click.Option))
    assert "runs no model" in " ".join(cmd.help.split()).lower()
