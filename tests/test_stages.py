"""The stage cache of staged jobs: skip when finished with the same inputs, recompute a
changed stage and every stage after it, keep an interrupted stage's work."""

from __future__ import annotations

import json

from viscope.stages import STAGE_FILE, Stage


def _chain(out, a_inputs, b_inputs):
    a = Stage(out, "a", a_inputs)
    b = Stage(out, "b", b_inputs, after=[a])
    return a, b


def test_finished_stages_are_skipped_and_a_change_reruns_it_and_the_ones_after(tmp_path):
    a, b = _chain(tmp_path, {"epochs": 2}, {"t": 0.5})
    for stage in (a, b):
        (stage.start() / "out.txt").write_text(stage.name)
        stage.finish({"value": stage.name})
    a, b = _chain(tmp_path, {"epochs": 2}, {"t": 0.5})
    assert a.done and b.done and b.result == {"value": "b"}
    # a change of b's own input: a stays done, b does not
    a, b2 = _chain(tmp_path, {"epochs": 2}, {"t": 0.6})
    assert a.done and not b2.done
    # a change upstream: both re-run, and b's old outputs are removed when it starts
    a3, b3 = _chain(tmp_path, {"epochs": 3}, {"t": 0.5})
    assert not a3.done and not b3.done
    b3.start()
    assert not (tmp_path / "b" / "out.txt").exists() and not (tmp_path / "b" / STAGE_FILE).exists()


def test_an_interrupted_stage_keeps_its_work_and_a_damaged_record_reruns(tmp_path):
    a = Stage(tmp_path, "a", {"x": 1})
    (a.start() / "checkpoint").write_text("epoch 3")  # interrupted: no stage.json
    again = Stage(tmp_path, "a", {"x": 1})
    assert not again.done
    again.start()
    assert (tmp_path / "a" / "checkpoint").read_text() == "epoch 3"
    again.finish()
    (tmp_path / "a" / STAGE_FILE).write_text("{not json")
    assert not Stage(tmp_path, "a", {"x": 1}).done


def test_the_record_holds_the_inputs_and_key(tmp_path):
    a = Stage(tmp_path, "a", {"lr": 0.1, "layers": ["x", "y"]})
    a.finish({"acc": 0.5})
    record = json.loads((tmp_path / "a" / STAGE_FILE).read_text())
    assert record == {"key": a.key, "inputs": {"layers": ["x", "y"], "lr": 0.1},
                      "result": {"acc": 0.5}}


def test_run_computes_once_then_skips_and_says_so(tmp_path):
    from viscope.stages import Stage, open_run_folder

    out = open_run_folder(tmp_path / "r", {"a": 1})
    assert (out / "config.yaml").read_text() == "a: 1\n" and (out / "environment.json").exists()
    calls, said = [], []
    body = lambda: calls.append(1) or {"x": len(calls)}  # noqa: E731
    assert Stage(out, "s", {"k": 1}).run(body, said.append, "job/s") is True
    assert Stage(out, "s", {"k": 1}).run(body, said.append) is False
    assert calls == [1] and Stage(out, "s", {"k": 1}).result == {"x": 1}
    assert said[0].startswith("job/s: done in") and said[1] == "s: finished earlier, skipped"
    assert Stage(out, "s", {"k": 2}).run(body, said.append) is True  # another key: again
    assert calls == [1, 1]
