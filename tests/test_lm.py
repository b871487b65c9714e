"""Tests for the local server's training core (``localserver._lm`` and ``ModelState.adamw_step``), without HTTP."""

import math
import random
import struct
import subprocess
import sys
import pathlib

import pytest

from tinkex_persist.localserver import _lm
from tinkex_persist.localserver._model import VALUES_PER_RANK, ModelState

BASE = "Qwen/Qwen3-8B"
QWEN_VOCAB = 151936
ADAM = (0.02, 0.9, 0.95, 1e-12, 0.0, 0.0)
BENCH = pathlib.Path(__file__).resolve().parent.parent / "tools" / "bench_model.py"


def make_batch(datums=4, tokens=32, seed=0, vocab=QWEN_VOCAB):
    rng = random.Random(seed)
    data = []
    for _ in range(datums):
        seq = [rng.randrange(vocab) for _ in range(tokens + 1)]
        data.append((seq[:-1], {"target_tokens": seq[1:], "weights": [1.0] * tokens}))
    return data


def train(state, data, steps, loss_fn="cross_entropy", adam=ADAM):
    curve = []
    for _ in range(steps):
        curve.append(_lm.forward_backward(state, data, loss_fn).metrics["loss:sum"])
        state.adamw_step(*adam)
    return curve


def trained_state(rank=2, steps=3, seed=1):
    state = ModelState(BASE, rank, seed)
    train(state, make_batch(2, 5, seed=7), steps)
    return state


def rl_batch(state, shift, advantages):
    """A batch whose sampling logprobs are the model's own logprobs minus ``shift`` (ratio = exp(shift))."""
    data = make_batch(2, 5, seed=7)
    out = _lm.forward_backward(state, data, "cross_entropy", forward_only=True)
    rl = []
    for (tokens, inputs), lps in zip(data, out.loss_fn_outputs):
        rl.append((tokens, {
            "target_tokens": inputs["target_tokens"],
            "logprobs": [lp - shift for lp in lps["logprobs"]],
            "advantages": list(advantages[: len(tokens)]),
        }))
    return rl


def gradient(state, data, loss_fn="cross_entropy", config=None):
    state.grad = None
    _lm.forward_backward(state, data, loss_fn, config)
    grad, state.grad = state.grad, None
    return grad


class TestForward:
    """Tests for the forward pass: log-probabilities, losses and outputs."""

    def test_logprobs_are_a_distribution(self):
        """The target log-probabilities of one input over every output bucket exponentiate and sum to 1."""
        state = trained_state()
        by_bucket = {}
        token = 0
        while len(by_bucket) < _lm.OUTPUTS:
            by_bucket.setdefault(_lm.token_bucket(token), token)
            token += 1
        targets = [by_bucket[b] for b in range(_lm.OUTPUTS)]
        data = [([1234] * len(targets), {"target_tokens": targets, "weights": [1.0] * len(targets)})]
        lps = _lm.forward_backward(state, data, "cross_entropy", forward_only=True).loss_fn_outputs[0]["logprobs"]
        assert 1.0 == pytest.approx(math.fsum(math.exp(lp) for lp in lps), abs=1e-12)

    def test_cross_entropy_outputs(self):
        """Each datum gets one logprob per token; ``loss:sum`` is the sum of -weight * logprob."""
        state = trained_state()
        data = make_batch(3, 7, seed=2)
        data[1][1]["weights"] = [0.0, 2.0, 0.5, 1.0, 0.0, 1.0, 3.0]
        out = _lm.forward_backward(state, data, "cross_entropy")
        assert [7, 7, 7] == [len(o["logprobs"]) for o in out.loss_fn_outputs]
        expected = [[-w * lp for w, lp in zip(inputs["weights"], o["logprobs"])]
                    for (_, inputs), o in zip(data, out.loss_fn_outputs)]
        assert expected == [o["elementwise_loss"] for o in out.loss_fn_outputs]
        assert pytest.approx(sum(map(sum, expected)), rel=1e-12) == out.metrics["loss:sum"]
        assert all(lp < 0 for o in out.loss_fn_outputs for lp in o["logprobs"])

    def test_forward_only_accumulates_nothing(self):
        """``forward_only`` gives the same outputs as a forward_backward and leaves the state as it was."""
        state = trained_state()
        data = make_batch(2, 9, seed=3)
        before = (state.weights_bytes(), state.optimizer_bytes())
        fwd = _lm.forward_backward(state, data, "cross_entropy", forward_only=True)
        assert (None, before) == (state.grad, (state.weights_bytes(), state.optimizer_bytes()))
        assert fwd == _lm.forward_backward(state, data, "cross_entropy")
        assert state.grad is not None

    def test_empty_batch(self):
        """An empty batch or an empty datum computes a zero loss and no gradient."""
        state = ModelState(BASE, 2)
        out = _lm.forward_backward(state, [([], {"target_tokens": [], "weights": []})], "cross_entropy")
        assert ([{"logprobs": [], "elementwise_loss": []}], {"loss:sum": 0}) == (out.loss_fn_outputs, out.metrics)
        assert [0.0] * len(state.weights) == state.grad


class TestTokenIds:
    """Tests for token-id handling: hashing, vocabulary sizes and the errors naming the datum."""

    @pytest.mark.parametrize(
        "base_model, size",
        [
            ("Qwen/Qwen3-8B", 151936),
            ("Qwen/Qwen3-30B-A3B", 151936),
            ("meta-llama/Llama-3.1-8B", 128256),
            ("openai/gpt-oss-20b", 201088),
            ("acme/unknown-model", _lm.DEFAULT_VOCAB_SIZE),
        ],
    )
    def test_vocab_size(self, base_model, size):
        """Known model families have their tokenizer's vocabulary size; others get the default 151,936."""
        assert size == _lm.vocab_size(base_model)
        assert 151936 == _lm.DEFAULT_VOCAB_SIZE

    def test_every_qwen_id_is_accepted(self):
        """Ids 0 and vocab-1, and ids that share a table row, are all valid inputs and targets."""
        state = ModelState(BASE, 1)
        ids = [0, 1, 151934, 151935, 248, 248 * 600]
        out = _lm.forward_backward(state, [(ids, {"target_tokens": ids[::-1], "weights": [1.0] * 6})], "cross_entropy")
        assert 6 == len(out.loss_fn_outputs[0]["logprobs"])
        assert all(0 <= _lm.token_row(t) < _lm.ROWS and 0 <= _lm.token_bucket(t) < _lm.OUTPUTS for t in range(5000))
        assert _lm.ROWS == len({_lm.token_row(t) for t in range(5000)})

    @pytest.mark.parametrize(
        "base_model, where, token",
        [
            (BASE, "model_input", 151936),
            (BASE, "model_input", -1),
            (BASE, "target_tokens", 10**9),
            ("meta-llama/Llama-3.1-8B", "model_input", 128256),
        ],
    )
    def test_out_of_vocabulary_names_the_datum(self, base_model, where, token):
        """An id outside [0, vocab) is a DatumError naming the datum index, the field and the position."""
        data = make_batch(3, 4, vocab=_lm.vocab_size(base_model))
        tokens, inputs = data[2]
        if where == "model_input":
            tokens[1] = token
        else:
            inputs["target_tokens"][1] = token
        with pytest.raises(_lm.DatumError) as info:
            _lm.check(base_model, data, "cross_entropy")
        assert (2, True, True) == (info.value.index, str(info.value).startswith("datum 2: %s[1]=%d" % (where, token)),
                                   "outside the vocabulary of %s" % base_model in str(info.value))

    def test_llama_id_above_its_vocab_is_valid_for_qwen(self):
        """Vocabulary bounds follow the base model: 130000 is a Qwen3 id but not a Llama 3 one."""
        data = [([130000], {"target_tokens": [5], "weights": [1.0]})]
        assert 1 == len(_lm.check(BASE, data, "cross_entropy").data)
        with pytest.raises(_lm.DatumError):
            _lm.check("meta-llama/Llama-3.1-8B", data, "cross_entropy")


class TestBadInput:
    """Tests for the errors a server turns into 400: unknown losses, bad configs, malformed datums."""

    @pytest.mark.parametrize(
        "loss_fn, fragment",
        [("nope", "'nope' is unknown"), ("dro", "'dro' is not supported"), ("custom", "'custom' is not supported")],
    )
    def test_loss_fn(self, loss_fn, fragment):
        """An unknown or unsupported loss_fn is a LossFnError listing the supported ones."""
        with pytest.raises(_lm.LossFnError) as info:
            _lm.forward_backward(ModelState(BASE, 1), make_batch(1, 2), loss_fn)
        assert (True, True) == (fragment in str(info.value), "cross_entropy, importance_sampling, ppo, cispo" in str(info.value))

    @pytest.mark.parametrize(
        "loss_fn, config, fragment",
        [
            ("cross_entropy", {"clip_low_threshold": 0.5}, "not used by cross_entropy"),
            ("ppo", {"beta": 0.5}, "not used by ppo"),
            ("ppo", {"clip_low_threshold": "x"}, "not a finite number"),
            ("ppo", {"clip_high_threshold": float("nan")}, "not a finite number"),
            ("cispo", {"clip_low_threshold": 1.5, "clip_high_threshold": 1.1}, "exceeds"),
        ],
    )
    def test_loss_fn_config(self, loss_fn, config, fragment):
        """A config key the loss does not use, a non-number, or inverted clip bounds is a LossFnError."""
        with pytest.raises(_lm.LossFnError) as info:
            _lm.check(BASE, [], loss_fn, config)
        assert fragment in str(info.value)

    @pytest.mark.parametrize(
        "datum, fragment",
        [
            ("not a pair", "expected a (tokens, loss_fn_inputs) pair"),
            (([1, 2], {"target_tokens": [1], "weights": [1.0, 1.0]}), "target_tokens has 1 values for 2"),
            (([1, 2], {"target_tokens": [1, 2], "weights": [1.0]}), "weights has 1 values for 2"),
            (([1, 2], {"target_tokens": [1, 2]}), "cross_entropy needs loss_fn_inputs 'weights'"),
            (([1, 2], {"target_tokens": [1, 2], "weights": [1.0, 1.0], "wieghts": [1.0]}), "unknown loss_fn_inputs 'wieghts'"),
            (([1, 2.0], {"target_tokens": [1, 2], "weights": [1.0, 1.0]}), "model_input[1] is 2.0, not an int"),
            (([1, True], {"target_tokens": [1, 2], "weights": [1.0, 1.0]}), "model_input[1] is True"),
            (([1, 2], {"target_tokens": [1, 2], "weights": [1.0, float("inf")]}), "weights[1] is inf"),
            (([1, 2], {"target_tokens": [1, 2], "weights": [1.0, "1"]}), "weights[1] is '1'"),
            (([1, 2], {"target_tokens": [1, 2], "weights": 1.0}), "weights must be a list"),
            ((5, {"target_tokens": [1, 2], "weights": [1.0]}), "model_input must be a list"),
            (([1, 2], [("target_tokens", [1, 2])]), "loss_fn_inputs must be a mapping"),
        ],
    )
    def test_datum(self, datum, fragment):
        """A malformed datum is a DatumError whose message starts with its index."""
        data = make_batch(1, 2) + [datum]
        with pytest.raises(_lm.DatumError) as info:
            _lm.check(BASE, data, "cross_entropy")
        assert (1, True, True) == (info.value.index, str(info.value).startswith("datum 1: "), fragment in str(info.value))

    def test_rl_inputs_required(self):
        """Policy losses need the sampling ``logprobs`` and ``advantages``."""
        with pytest.raises(_lm.DatumError) as info:
            _lm.check(BASE, make_batch(1, 2), "importance_sampling")
        assert "importance_sampling needs loss_fn_inputs 'logprobs', 'advantages'" in str(info.value)

    def test_ratio_overflow_names_the_datum(self):
        """An importance ratio too large for a float is a DatumError, and the pending gradient is kept as it was."""
        state = trained_state()
        _lm.forward_backward(state, make_batch(1, 3), "cross_entropy")
        pending = list(state.grad)
        data = rl_batch(state, 0.0, [1.0] * 5)
        data[1][1]["logprobs"][2] = -1000.0
        with pytest.raises(_lm.DatumError) as info:
            _lm.forward_backward(state, data, "ppo")
        message = "datum 1: the importance ratio at position 2 overflows"
        assert (1, True, pending) == (info.value.index, str(info.value).startswith(message), state.grad)

    def test_errors_leave_state_untouched(self):
        """A batch with one bad datum accumulates nothing, even from the good datums before it."""
        state = trained_state()
        data = make_batch(2, 3) + [([QWEN_VOCAB], {"target_tokens": [0], "weights": [1.0]})]
        with pytest.raises(_lm.LMError):
            _lm.forward_backward(state, data, "cross_entropy")
        assert state.grad is None


class TestGradients:
    """Tests for the LoRA gradients against finite differences and against each other."""

    @pytest.mark.parametrize(
        "loss_fn, shift, advantages",
        [
            ("cross_entropy", None, None),
            ("importance_sampling", 0.3, [1.0, -0.5, 2.0, 0.0, -1.5]),
            ("ppo", 0.05, [1.0, -0.5, 2.0, 0.0, -1.5]),  # ratios inside the clip range
            ("ppo", 0.5, [1.0, -0.5, 2.0, 0.0, -1.5]),  # ratios above it: clipped where advantages > 0
        ],
    )
    def test_finite_differences(self, loss_fn, shift, advantages):
        """Every weight's gradient matches a central finite difference of ``loss:sum``."""
        state = trained_state(rank=2)
        if loss_fn == "cross_entropy":
            data = make_batch(2, 5, seed=7)
            data[0][1]["weights"] = [1.0, 0.0, 2.0, -0.5, 1.0]
        else:
            data = rl_batch(state, shift, advantages)
        grad = gradient(state, data, loss_fn)

        def loss():
            return _lm.forward_backward(state, data, loss_fn, forward_only=True).metrics["loss:sum"]

        eps = 1e-6
        numeric = []
        for i in range(len(state.weights)):
            keep = state.weights[i]
            state.weights[i] = keep + eps
            up = loss()
            state.weights[i] = keep - eps
            down = loss()
            state.weights[i] = keep
            numeric.append((up - down) / (2 * eps))
        assert any(abs(g) > 1e-3 for g in grad[: _lm.ROWS * 2]) and any(abs(g) > 1e-3 for g in grad[_lm.ROWS * 2 :])
        assert numeric == pytest.approx(grad, rel=1e-5, abs=1e-7)

    def test_importance_sampling_on_policy_is_weighted_cross_entropy(self):
        """At ratio 1, importance sampling has the gradient of cross-entropy weighted by the advantages."""
        state = trained_state()
        adv = [1.0, -2.0, 0.5, 3.0, -1.0]
        data = rl_batch(state, 0.0, adv)
        ce = [(tokens, {"target_tokens": x["target_tokens"], "weights": adv}) for tokens, x in data]
        out = _lm.forward_backward(state, data, "importance_sampling")
        assert pytest.approx(-sum(adv) * len(data), rel=1e-12) == out.metrics["loss:sum"]
        assert pytest.approx(gradient(state, ce), rel=1e-9, abs=1e-15) == gradient(state, data, "importance_sampling")

    def test_ppo_clipped_ratio_has_no_gradient(self):
        """PPO with positive advantages and ratios above ``clip_high_threshold`` has a zero gradient."""
        state = trained_state()
        data = rl_batch(state, 1.0, [1.0] * 5)
        out = _lm.forward_backward(state, data, "ppo", {"clip_high_threshold": 1.5})
        assert pytest.approx(-1.5 * 5 * len(data), rel=1e-12) == out.metrics["loss:sum"]
        assert [0.0] * len(state.weights) == state.grad

    def test_cispo_is_clipped_weighted_cross_entropy(self):
        """CISPO's gradient is cross-entropy's weighted by clip(ratio) * advantage (the ratio is not differentiated)."""
        state = trained_state()
        adv = [1.0, -2.0, 0.5, 3.0, -1.0]
        data = rl_batch(state, 0.5, adv)
        clipped = min(max(math.exp(0.5), 0.8), 1.2)
        ce = [(tokens, {"target_tokens": x["target_tokens"], "weights": [clipped * a for a in adv]}) for tokens, x in data]
        assert pytest.approx(gradient(state, ce), rel=1e-9, abs=1e-15) == gradient(state, data, "cispo")
        cispo = _lm.forward_backward(state, data, "cispo", forward_only=True)
        assert pytest.approx(_lm.forward_backward(state, ce, "cross_entropy").metrics["loss:sum"], rel=1e-9) == (
            cispo.metrics["loss:sum"])

    def test_gradients_accumulate(self):
        """Two forward_backward calls accumulate exactly twice the gradient of one."""
        state = trained_state()
        data = make_batch(2, 8, seed=9)
        once = gradient(state, data)
        _lm.forward_backward(state, data, "cross_entropy")
        _lm.forward_backward(state, data, "cross_entropy")
        assert [2 * g for g in once] == state.grad


class TestAdamW:
    """Tests for ``ModelState.adamw_step``: torch AdamW semantics on the accumulated gradient."""

    def test_first_step(self):
        """Step 1 is bias-corrected to ``-lr * sign(g)`` after decoupled decay; untouched weights only decay."""
        state = trained_state(steps=0)
        state.weights = state.weights.__class__("d", [0.5] * len(state.weights))
        grad = [0.0] * len(state.weights)
        grad[3], grad[-1] = 0.25, -4.0
        state.grad = list(grad)
        lr, wd = 0.01, 0.1
        metrics = state.adamw_step(lr, 0.9, 0.95, 1e-12, wd, 0.0)
        expected = [0.5 * (1 - lr * wd) - lr * (g > 0) + lr * (g < 0) for g in grad]
        assert pytest.approx(expected, rel=1e-9) == list(state.weights)
        assert (None, 1, 1.0) == (state.grad, state.step, metrics["step"])
        assert pytest.approx(math.sqrt(0.25**2 + 16), rel=1e-12) == metrics["grad_norm"]
        assert [0.1 * g for g in grad] == pytest.approx(list(state.m), rel=1e-12)
        assert [0.05 * g * g for g in grad] == pytest.approx(list(state.v), rel=1e-12)

    def test_second_step_matches_reference(self):
        """Two steps equal a direct transcription of torch's AdamW update."""
        state = trained_state(steps=0)
        w = list(state.weights)
        m = [0.0] * len(w)
        v = [0.0] * len(w)
        b1, b2, lr, eps, wd = 0.8, 0.9, 0.05, 1e-8, 0.01
        rng = random.Random(3)
        for step in (1, 2):
            g = [rng.uniform(-1, 1) for _ in w]
            state.grad = list(g)
            state.adamw_step(lr, b1, b2, eps, wd, 0.0)
            m = [mi * b1 + (1 - b1) * gi for mi, gi in zip(m, g)]
            v = [vi * b2 + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
            denom = [math.sqrt(vi) / math.sqrt(1 - b2**step) + eps for vi in v]
            w = [wi * (1 - lr * wd) - lr / (1 - b1**step) * mi / di for wi, mi, di in zip(w, m, denom)]
        assert pytest.approx(w, rel=1e-12, abs=1e-15) == list(state.weights)

    def test_grad_clip(self):
        """With ``grad_clip_norm`` > 0 the gradient is scaled to that global norm before the moments see it."""
        state = trained_state(steps=0)
        grad = [0.0] * len(state.weights)
        grad[0], grad[1] = 3.0, 4.0
        state.grad = grad
        metrics = state.adamw_step(0.01, 0.9, 0.95, 1e-12, 0.0, 1.0)
        assert (5.0, pytest.approx([0.1 * 0.6, 0.1 * 0.8], rel=1e-6)) == (metrics["grad_norm"], list(state.m[:2]))

    def test_small_gradient_is_not_clipped(self):
        """A gradient whose norm is below ``grad_clip_norm`` reaches the moments unchanged."""
        state = trained_state(steps=0)
        state.grad = [0.0] * len(state.weights)
        state.grad[0] = 0.5
        state.adamw_step(0.01, 0.9, 0.95, 1e-12, 0.0, 1.0)
        assert pytest.approx(0.1 * 0.5, rel=1e-12) == state.m[0]

    def test_without_gradient_a_fresh_model_only_decays(self):
        """A step with nothing accumulated is AdamW on a zero gradient: on fresh moments the weights only decay
        (``w * (1 - lr * wd)``), the moments stay zero, the step count advances and no loss is reported."""
        state = ModelState(BASE, 1)
        before = list(state.weights)
        lr, wd = 0.02, 0.1
        metrics = state.adamw_step(lr, 0.9, 0.95, 1e-12, wd, 0.0)
        assert [w * (1 - lr * wd) for w in before] == list(state.weights)
        assert ([0.0] * len(before), [0.0] * len(before), 1) == (list(state.m), list(state.v), state.step)
        assert {"grad_norm": 0.0, "step": 1.0, "learning_rate": lr} == metrics

    def test_without_gradient_and_without_decay_a_fresh_model_keeps_its_weights(self):
        """With weight decay 0, optim_step alone leaves a fresh model's weights bit-exact: nothing is invented."""
        state = ModelState(BASE, 1)
        before = state.weights_bytes()
        state.adamw_step(*ADAM)
        assert (before, 1) == (state.weights_bytes(), state.step)

    def test_without_gradient_the_moments_decay_and_still_move_the_weights(self):
        """After a real step, a step on a zero gradient decays m by beta1 and v by beta2, and the weights move by
        what the moments carry, as torch's AdamW after ``zero_grad(set_to_none=False)``."""
        state = trained_state(steps=1)
        w, m, v = list(state.weights), list(state.m), list(state.v)
        b1, b2, lr, eps, wd = 0.9, 0.95, 0.02, 1e-12, 0.01
        metrics = state.adamw_step(lr, b1, b2, eps, wd, 0.0)
        m = [b1 * mi for mi in m]
        v = [b2 * vi for vi in v]
        denom = [math.sqrt(vi) / math.sqrt(1 - b2**2) + eps for vi in v]
        w = [wi * (1 - lr * wd) - lr / (1 - b1**2) * mi / di for wi, mi, di in zip(w, m, denom)]
        assert any(m) and any(v)
        assert (pytest.approx(m, rel=1e-12), pytest.approx(v, rel=1e-12)) == (list(state.m), list(state.v))
        assert pytest.approx(w, rel=1e-12, abs=1e-15) == list(state.weights)
        assert (2, 0.0, False) == (state.step, metrics["grad_norm"], "loss" in metrics)


class TestTraining:
    """Tests for training runs: loss falls, bit-determinism, exact resume and checkpoint compatibility."""

    def test_loss_falls_on_a_repeated_batch(self):
        """Twenty steps on one batch lower the loss at every step and by a visible margin."""
        curve = train(ModelState(BASE, 8, seed=1), make_batch(), 20)
        assert all(b < a for a, b in zip(curve, curve[1:]))
        assert curve[-1] < 0.9 * curve[0]

    @pytest.mark.parametrize("loss_fn", ["importance_sampling", "ppo", "cispo"])
    def test_policy_losses_raise_the_likelihood_of_advantaged_tokens(self, loss_fn):
        """Positive advantages on every token make the policy losses raise the target log-probabilities."""
        state = ModelState(BASE, 4, seed=1)
        data = rl_batch(state, 0.0, [1.0] * 5)

        def likelihood():
            out = _lm.forward_backward(state, data, loss_fn, forward_only=True)
            return sum(sum(o["logprobs"]) for o in out.loss_fn_outputs)

        before = likelihood()
        for _ in range(5):
            _lm.forward_backward(state, data, loss_fn)
            state.adamw_step(*ADAM)
        assert likelihood() > before

    def test_bit_deterministic(self):
        """The same base model, rank and seed give the same floats: curves, weights and moments."""
        runs = []
        for _ in range(2):
            state = ModelState(BASE, 4, seed=3)
            runs.append((train(state, make_batch(), 5), state.weights_bytes(), state.optimizer_bytes()))
        assert runs[0] == runs[1]
        assert runs[0][0] != train(ModelState(BASE, 4, seed=4), make_batch(), 5)
        assert runs[0][0] != train(ModelState("Qwen/Qwen3-32B", 4, seed=3), make_batch(), 5)

    def test_resume_with_optimizer_continues_the_curve(self):
        """Weights plus Adam state saved after k steps, restored into a fresh model, continue the same curve."""
        data = make_batch()
        straight = ModelState(BASE, 8, seed=1)
        first = train(straight, data, 6)
        weights, optimizer = straight.weights_bytes(), straight.optimizer_bytes()
        rest = train(straight, data, 6)
        resumed = ModelState(BASE, 8, seed=99)
        resumed.restore(weights, optimizer)
        assert rest == train(resumed, data, 6)
        assert (straight.weights_bytes(), straight.optimizer_bytes()) == (resumed.weights_bytes(), resumed.optimizer_bytes())
        plain = ModelState(BASE, 8, seed=99)
        plain.restore(weights, None)
        diverged = train(plain, data, 6)
        assert (rest[0], True) == (diverged[0], rest[1:] != diverged[1:])
        assert first[-1] > rest[0]

    def test_restore_drops_pending_gradient(self):
        """Restoring a checkpoint discards a gradient accumulated before it."""
        state = trained_state()
        _lm.forward_backward(state, make_batch(1, 3), "cross_entropy")
        state.restore(state.weights_bytes(), state.optimizer_bytes())
        assert state.grad is None

    def test_old_checkpoint_layout_trains(self):
        """A checkpoint in the byte form older servers wrote (rank * 256 float64, step + moments) loads and trains."""
        rank = 2
        n = rank * VALUES_PER_RANK
        rng = random.Random(0)
        weights = struct.pack("<%dd" % n, *(rng.gauss(0.0, 0.02) for _ in range(n)))
        optimizer = struct.pack("<Q", 3) + struct.pack("<%dd" % n, *([0.001] * n)) + struct.pack("<%dd" % n, *([1e-6] * n))
        state = ModelState(BASE, rank)
        state.restore(weights, optimizer)
        curve = train(state, make_batch(), 5)
        assert (256, 8, True) == (VALUES_PER_RANK, state.step, curve[-1] < curve[0])


class TestBenchScript:
    """Tests for ``tools/bench_model.py`` (it runs; speed is reported, not asserted)."""

    def test_runs(self):
        """A short run exits 0 and prints one timing line per rank."""
        proc = subprocess.run([sys.executable, str(BENCH), "--steps", "2", "--repeats", "1", "--ranks", "1", "2"],
                              capture_output=True, text=True, timeout=120)
        assert (0, 2) == (proc.returncode, proc.stdout.count(" s per 2 steps")), proc.stderr[-2000:]
