"""`tokenflow generate` as a user runs it: a real subprocess."""

import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "generator.cli"]


def run(args, **kw):
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=120, **kw)


def test_generate_streams_text_and_stats(tiny_model_dir, tiny_engine):
    from decoding import SamplingParams

    res = run(["generate", "Once upon a time", "--model", str(tiny_model_dir), "--max-new-tokens", "12",
               "--ignore-eos", "--stats"])
    assert res.returncode == 0, res.stderr
    expected = tiny_engine.generate_text("Once upon a time", SamplingParams(max_new_tokens=12, ignore_eos=True))
    assert res.stdout == expected + "\n"
    assert "[stats] 12 tokens" in res.stderr and "ttft" in res.stderr and "tok/s" in res.stderr
    # --stats names what runs: the model, the resolved engine configuration and the kernels' word, one line
    engine_lines = [line for line in res.stderr.splitlines() if line.startswith("[engine] ")]
    assert engine_lines == [f"[engine] {tiny_engine.name}: {tiny_engine.config.summary()} "
                            f"(kernels: {tiny_engine.config.kernels_reason})"]
    assert "[loading]" not in res.stderr  # the load's stages are -v's


def test_verbose_says_each_stage_of_the_load(tiny_model_dir):
    res = run(["generate", "Once", "--model", str(tiny_model_dir), "--max-new-tokens", "2", "-v"])
    assert res.returncode == 0, res.stderr
    stages = [line.split("]")[0].removeprefix("tokenflow: [") for line in res.stderr.splitlines()
              if line.startswith("tokenflow: [")]
    assert stages == ["loading", "preparing"]  # a local folder: nothing to fetch or convert
    assert "[engine] " in res.stderr and "kernels=" in res.stderr


@pytest.mark.parametrize("args, stdin, message", [
    (["generate", ""], None, "the prompt is empty"),
    (["generate", "-"], "\n", "the prompt is empty (nothing on stdin)"),
    (["generate", "hi", "--top-k", "-3"], None, "top_k"),
    (["generate", "hi", "--quant", "int5"], None, "--quant"),
    (["compare", "hi", "--strategy", "greedy", "--engine-arg", "nope=1"], None, "nope"),
])
def test_bad_input_fails_before_the_model_loads(args, stdin, message):
    """A model that does not exist is never reached: the flags and the prompt fail first."""
    res = run([*args, "--model", "/nonexistent/model"], input=stdin)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("tokenflow: error: ") and message in res.stderr
    assert "Traceback" not in res.stderr and "/nonexistent" not in res.stderr


def test_prompt_from_stdin_and_chat(tiny_model_dir):
    res = run(["generate", "-", "--chat", "--model", str(tiny_model_dir), "--max-new-tokens", "5",
               "--strategy", "sample", "--seed", "1"], input="hello there\n")
    again = run(["generate", "hello there", "--chat", "--model", str(tiny_model_dir), "--max-new-tokens", "5",
                 "--strategy", "sample", "--seed", "1"])
    assert res.returncode == 0 and res.stdout == again.stdout


@pytest.mark.parametrize("args,needle", [
    (["--top-p", "1.5"], "top_p"),
    (["--temperature", "hot"], "--temperature"),
    (["--strategy", "wizard"], "strategy"),
    (["--no-such-flag"], "unrecognized"),
    (["--strategy", "beam", "--num-beams", "1"], "num_beams"),
])
def test_bad_flags_give_one_line_and_nonzero_exit(tiny_model_dir, args, needle):
    res = run(["generate", "hi", "--model", str(tiny_model_dir)] + args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tokenflow: error:") and needle in lines[0]
    assert "Traceback" not in res.stderr


def test_missing_model_is_one_clear_line(tmp_path):
    res = run(["generate", "hi", "--model", str(tmp_path / "nope.gguf")])
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [f"tokenflow: error: no such GGUF file: {tmp_path / 'nope.gguf'}"]


def test_corrupt_model_folder_is_one_clear_line(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    res = run(["generate", "hi", "--model", str(tmp_path)])
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "could not load model" in res.stderr


def test_pipe_closed_early_is_not_an_error_and_stats_still_come(tiny_model_dir):
    proc = subprocess.Popen(CLI + ["generate", "Once", "--model", str(tiny_model_dir), "--max-new-tokens", "200",
                                   "--ignore-eos", "--stats"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(3)
    proc.stdout.close()  # like `| head -c 3`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert "Traceback" not in err and "Broken pipe" not in err
    # The generation stops with its reader, and --stats still reaches stderr.
    stats = [line for line in err.splitlines() if line.startswith("[stats] ")]
    assert len(stats) == 1 and stats[0].endswith("finish=stdout closed")
    assert int(stats[0].split()[1]) < 200


def test_help_documents_every_flag():
    res = run(["generate", "--help"])
    from dataclasses import fields

    from decoding import SamplingParams

    assert res.returncode == 0
    for f in fields(SamplingParams):
        if f.name == "speculative":  # one request a command: the engine's --speculate sets it
            continue
        assert "--" + f.name.replace("_", "-") in res.stdout
    for flag in ("--chat", "--stats", "--model", "--device", "--dtype", "--speculate"):
        assert flag in res.stdout


def test_generate_n_prints_every_choice_as_the_engine_makes_them(tiny_model_dir, tiny_engine):
    # --n K: choice 0 streams, the others follow under a header; each equals Engine.stream_n's text.
    from decoding import SamplingParams

    res = run(["generate", "Once upon a time", "--model", str(tiny_model_dir), "--max-new-tokens", "8",
               "--ignore-eos", "--strategy", "sample", "--seed", "5", "--n", "3"])
    assert res.returncode == 0, res.stderr
    params = SamplingParams(strategy="sample", seed=5, n=3, max_new_tokens=8, ignore_eos=True)
    texts = ["", "", ""]
    for choice, ev in tiny_engine.stream_n("Once upon a time", params):
        texts[choice] += ev.text
    assert res.stdout == (f"{texts[0]}\n--- choice 1, seed 6 ---\n{texts[1]}\n"
                          f"--- choice 2, seed 7 ---\n{texts[2]}\n")
