"""Loss spikes (training/spikes.py): the prompting case is caught, noise and tiny wobble are not,
a spike that stays up is called persisting, and the summary and report carry them."""

from __future__ import annotations

from chattune.training.spikes import SpikeWatch, spike_line


def feed(losses, grad_norms=None):
    watch, events = SpikeWatch(), []
    for step, loss in enumerate(losses, start=1):
        events.append(watch.add(step, loss, (grad_norms or [None] * len(losses))[step - 1]))
    return watch, events


def test_qwen_seed_002_at_lr_1e3_is_a_spike():
    watch, events = feed([0.32, 0.38, 0.63, 2.92], [16, 20, 31, 68])
    assert events == [None, None, None, "spike"]
    spike = watch.spikes[0]
    assert (spike["step"], spike["level"], spike["grad_norm"]) == (4, 0.38, 68)
    line = spike_line(spike, 1e-3)
    assert "step 4" in line and "7.7x" in line and "train.lr=0.001" in line and "warmup" in line


def test_noise_and_tiny_losses_are_not_spikes():
    _, events = feed([2.1, 1.9, 2.3, 1.7, 2.0, 1.6, 2.2, 1.5])  # a noisy but steady descent
    assert events == [None] * 8
    _, events = feed([0.0005, 0.0003, 0.002, 0.0001])  # 6x, but far below half a nat
    assert events == [None] * 4


def test_a_spike_that_stays_up_persists_and_one_that_falls_back_does_not():
    watch, events = feed([1.0, 0.9, 0.8, 3.5, 3.0, 2.9, 2.8, 2.7])
    assert events[3] == "spike" and events[6] == "persists"
    assert watch.summary(1e-3)["persisting"] is True
    watch, events = feed([1.0, 0.9, 0.8, 3.5, 0.8, 0.7, 0.7])
    assert events == [None, None, None, "spike", None, None, None]
    assert watch.summary(1e-3)["persisting"] is False
    assert feed([1.0, 0.9])[0].summary(1e-3) is None


def test_the_report_shows_spikes_with_the_advice():
    from chattune.report.html import spikes_table

    watch, _ = feed([0.32, 0.38, 0.63, 2.92])
    html = spikes_table(watch.summary(1e-3))
    assert "2.92" in html and "0.38" in html and "train.lr=0.001" in html
    assert "none" in spikes_table(None)
