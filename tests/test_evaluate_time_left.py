"""The Evaluate page's "about M:SS left", fed made-up times: what an evaluation has left is the
rest of its passes at the rates they were measured at, with a load and a first batch's warm-up
never extrapolated (#24: "about 6:12 left" for an evaluation that finished in 1:45)."""

from __future__ import annotations

import pytest

from lora_studio.core.evaluate import EvalProgress, TimeLeft


def timeline(
    *,
    models: int = 2,
    examples: int = 45,
    batch: int = 8,
    load: float = 20.0,
    loss: float = 0.05,
    generate: float = 1.0,
    warmup: float = 10.0,
    generates: bool = True,
) -> list[tuple[float, EvalProgress]]:
    """The events of a base-vs-tuned evaluation on one load, with the time each arrives: ``loss`` and
    ``generate`` seconds per example, ``warmup`` more on the first generation batch of all."""
    now, out = 0.0, []

    def emit(stage: str, done: int, total: int, index: int) -> None:
        out.append((now, EvalProgress(stage, done, total, f"m{index}", index, models)))

    emit("loading model", 0, 1, 0)
    now += load
    for index in range(models):
        stages = [("loss", loss), ("generating", generate)] if generates else [("loss", loss)]
        for stage, per_example in stages:
            for done in range(batch, examples + batch, batch):
                size = min(done, examples) - (done - batch)
                now += size * per_example + (
                    warmup if (stage, done, index) == ("generating", batch, 0) else 0.0
                )
                emit(stage, min(done, examples), examples, index)
        emit("scoring", 0, 1, index)
    emit("comparing", 0, 1, 0)
    return out


def estimates(events, **plan) -> list[tuple[float, float, float | None, EvalProgress]]:
    """(time, true seconds left, estimate, event) after each event."""
    clock = TimeLeft(**plan)
    end = events[-1][0]
    out = []
    for now, event in events:
        clock.update(event, now)
        out.append((now, end - now, clock.seconds(), event))
    return out


def test_no_estimate_until_every_pass_still_to_come_has_been_timed():
    rows = estimates(timeline(), models=2, examples=45, loads=1)
    first_answers = next(k for k, row in enumerate(rows) if row[3].stage == "generating")
    # the load and the loss pass say nothing about how long answering takes: no number yet
    assert all(estimate is None for _, _, estimate, _ in rows[:first_answers])
    assert rows[-1][2] == 0.0  # comparing: the passes are done


def test_the_estimate_follows_the_measured_rates_not_the_load_or_the_warm_up():
    rows = estimates(timeline(), models=2, examples=45, loads=1)
    # from the second answer batch on the rates are the steady ones, and what is left is exactly
    # the rest at those rates: the 20 s load and the first batch's 10 s warm-up are not extrapolated
    known = [(left, estimate) for _, left, estimate, _ in rows if estimate is not None]
    assert len(known) > 15
    for left, estimate in known:
        assert estimate == pytest.approx(left)
    # two batches into the first model's answers: 29 answers of this model, then the next model's
    # loss pass (45 x 0.05 s) and its 45 answers
    _, left, estimate, _ = next(
        row for row in rows if row[3].stage == "generating" and row[3].done == 16 and row[3].model_index == 0
    )
    assert estimate == pytest.approx(29 * 1.0 + 45 * 0.05 + 45 * 1.0)


def test_the_old_share_of_the_bar_over_elapsed_time_promised_minutes_for_seconds():
    """What the page did before: elapsed x (1 - share) / share, the load included, a model's loss
    pass counted as a fifth of its share of the bar."""
    rows = estimates(timeline(), models=2, examples=45, loads=1)
    now, left, estimate, event = next(row for row in rows if row[3].stage == "loss" and row[3].done == 45)
    share = (event.model_index + 0.2) / event.models
    assert now * (1 - share) / share > 1.7 * left  # the over-promise reported in #24
    assert estimate is None  # now: no number until answering has been timed


def test_between_reports_the_estimate_counts_down():
    clock = TimeLeft(models=1, examples=40, generates=False, loads=1)
    clock.update(EvalProgress("loading model", 0, 1, "m", 0), 0.0)
    clock.update(EvalProgress("loss", 10, 40, "m", 0), 5.0)  # load + first batch
    clock.update(EvalProgress("loss", 20, 40, "m", 0), 7.0)  # 0.2 s per example from here on
    assert clock.seconds() == pytest.approx(4.0)
    assert clock.seconds(now=8.5) == pytest.approx(2.5)
    assert clock.seconds(now=30.0) == 0.0


def test_a_second_load_is_timed_as_the_first_one_was():
    clock = TimeLeft(models=2, examples=20, generates=False, loads=2)
    clock.update(EvalProgress("loading model", 0, 1, "a", 0, 2), 0.0)
    clock.update(EvalProgress("loss", 10, 20, "a", 0, 2), 12.0)  # a 12 s load (with its first batch)
    assert clock.seconds() is None  # no steady loss rate yet
    clock.update(EvalProgress("loss", 20, 20, "a", 0, 2), 13.0)  # 0.1 s per example
    # this pass is done; the second load (12 s) and the second model's pass (2 s) are left
    assert clock.seconds() == pytest.approx(12.0 + 2.0)
    clock.update(EvalProgress("scoring", 0, 1, "a", 0, 2), 13.0)
    clock.update(EvalProgress("loading model", 0, 1, "b", 1, 2), 13.0)
    assert clock.seconds(now=19.0) == pytest.approx(6.0 + 2.0)


def test_a_pass_of_one_batch_is_timed_from_its_start_warm_up_included():
    """With max examples 8 and batch 8 each pass is one report: its only measure is its first batch."""
    rows = estimates(timeline(examples=8, warmup=2.0), models=2, examples=8, loads=1)
    known = [(left, estimate, event) for _, left, estimate, event in rows if estimate is not None]
    assert known and known[-1][1] == 0.0
    for left, estimate, _ in known:
        assert estimate >= left - 1e-9  # the warm-up is counted again, never missed: a little long
        assert estimate <= left + 2.0 + 1e-9
