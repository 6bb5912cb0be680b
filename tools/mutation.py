"""Curated mutation testing of robustjax's maths-bearing modules.

Each mutant is one plausible single-line maths bug (a wrong constant, a
dropped term, swapped arguments, a flipped comparison) written as an exact
``(original, mutated)`` snippet of one file, with the test selection that
covers it. The runner copies the repository once into a temporary folder,
and for every mutant writes the mutated file there, runs only the covering
tests with ``pytest -x`` (stopping at the first failure), and puts the file
back. A mutant is *killed* when the tests fail, and *survives* when they
pass. The score of a module is killed / (mutants - equivalent), where an
equivalent mutant is one no test can tell apart (its reason is listed).

Why a curated list rather than mutmut or cosmic-ray: both generate every
operator, constant and string mutation of a file. Measured with mutmut 3.8.1
on ``training/objectives.py`` alone (2026-12-01, this 2-core machine): 433
mutants, 176 of them in code the known-answer tests never reach (the
registry, config checks, log messages, the train-mode attack path), and
the survivors among the rest were config checks, metric names, dtype casts
and closures the selected tests build but never call, not maths; it
forks the test process per mutant, which JAX warns may deadlock (4 mutants
timed out), and 340 of the 433 took 8 minutes. The modules below hold about
6,700 lines, so a full run is hours and hundreds of survivors to triage
(mutmut 3.3.1 does not run at all here: it reads a pytest attribute that
pytest 9 removed). cosmic-ray, which starts a fresh test process per
mutant, would pay JAX's import and compilation (about 10 s) every time. A
curated list of maths bugs, each run against seconds of known-answer
tests, takes minutes and names what is caught.

Usage (from the repository root, with the project's Python):

  python tools/mutation.py                    # every mutant, per-module score
  python tools/mutation.py --module attacks   # one module
  python tools/mutation.py --only apgd,fab    # ids containing either
  python tools/mutation.py --list             # the mutants, nothing run
  python tools/mutation.py --check            # each snippet applies once

Exit status 1 if a module scores under ``--min-score`` (default 90).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Test selections (pytest arguments), named so mutants share them.
KA = "tests/test_known_answers.py"
KAW = "tests/test_known_answers_weights.py"
SELECTIONS: dict[str, tuple[str, ...]] = {
    "objectives": (KA, "-k", "objective_value or configured_beta"),
    "objective_attacks": (KA, "-k", "objective_attack_steps"),
    "attack_losses": (KA, "-k", "attack_losses"),
    "apgd": (KA, "-k", "apgd"),
    "apgd_schedule": ("tests/test_autoattack.py", "-k", "schedule"),
    "fab": (KA, "-k", "fab"),
    "square": (KA, "-k", "square"),
    "frost": (KA, "-k", "frost"),
    "pgd_l2": (KA, "-k", "l2_pgd"),
    "fab_projection": ("tests/test_autoattack.py", "-k", "projection"),
    "square_l2": ("tests/test_autoattack.py", "-k",
                  "square_l2_query or eta_pattern"),
    "apgd_l2": (KA, "-k", "apgd_l2"),
    "rws": (KAW, "-k", "rws"),
    "ties": (KAW, "-k", "ties"),
    "dare": (KAW, "-k", "dare"),
    "interpolation": (KAW, "-k", "interpolation or rift_states"),
    "barrier": (KAW, "-k", "barrier"),
    "rift": (KAW, "-k", "rift"),
    "rws_average": ("tests/test_rws.py", "-k", "average_follows"),
}
# One selection per corruption: the tests that compare it with the
# independent numpy/scipy/PIL reference (tests/cifar_c_reference.py).
for _name in ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
              "gaussian_blur", "zoom_blur", "brightness", "contrast",
              "pixelate", "jpeg_compression", "fog"):
  # Slow tests included: the default run compares severity 3 only, the
  # slow one every severity.
  SELECTIONS[_name] = ("tests/test_corruptions.py", "-m", "slow or not slow",
                       "-k", "(matches_reference_maths or noise_statistics or "
                       f"pixelate_equals or severity_is_monotone) and {_name}")


@dataclasses.dataclass(frozen=True)
class Mutant:
  id: str
  module: str                 # the score group
  path: str                   # file, relative to the repository root
  original: str               # exact snippet, occurring once in the file
  mutated: str
  selection: str              # key of SELECTIONS
  equivalent: str = ""        # why no test can kill it ("" = not)


A = "robustjax/attacks/"
OBJ = "robustjax/training/objectives.py"
WS = "robustjax/weightspace/"
RWS = "robustjax/rws/"
RIFT = "robustjax/rift/"
COR = "robustjax/data/corruptions/"

MUTANTS: list[Mutant] = [
    # ------------------------------------------------------------- attacks
    Mutant("pgd-linf-2eps", "attacks", A + "pgd.py",
           "delta = jnp.clip(delta, -eps, eps)",
           "delta = jnp.clip(delta, -2 * eps, 2 * eps)", "objective_attacks"),
    Mutant("pgd-no-box-clip", "attacks", A + "pgd.py",
           "  return jnp.clip(x + delta, 0.0, 1.0)\n\n\ndef _ascent",
           "  return x + delta\n\n\ndef _ascent", "objective_attacks"),
    Mutant("pgd-descent", "attacks", A + "pgd.py",
           "return _project(x_adv + step_size * _ascent_direction(g, norm)",
           "return _project(x_adv - step_size * _ascent_direction(g, norm)",
           "objective_attacks"),
    Mutant("trades-start-scale", "attacks", A + "pgd.py",
           "TRADES_INIT_SCALE = 0.001", "TRADES_INIT_SCALE = 0.01",
           "objective_attacks"),
    Mutant("kl-attack-from-adv", "attacks", A + "pgd.py",
           "return lambda z: kl_divergence(clean, logits_fn(z))",
           "return lambda z: kl_divergence(logits_fn(z), clean)",
           "objective_attacks"),
    Mutant("apgd-no-momentum", "attacks", A + "apgd.py",
           "a = jnp.where(i > 0, MOMENTUM, 1.0)",
           "a = jnp.where(i > 0, 1.0, 1.0)", "apgd"),
    Mutant("apgd-momentum-half", "attacks", A + "apgd.py",
           "MOMENTUM = 0.75", "MOMENTUM = 0.5", "apgd"),
    Mutant("apgd-first-step-eps", "attacks", A + "apgd.py",
           "step_size=2.0 * jnp.broadcast_to(",
           "step_size=1.0 * jnp.broadcast_to(", "apgd"),
    Mutant("apgd-no-halving", "attacks", A + "apgd.py",
           "jnp.where(reduce, s[\"step_size\"] / 2, s[\"step_size\"])",
           "jnp.where(reduce, s[\"step_size\"], s[\"step_size\"])", "apgd"),
    Mutant("apgd-no-restart", "attacks", A + "apgd.py",
           "x_adv=it.where_b(reduce, x_best, x_new)", "x_adv=x_new", "apgd"),
    Mutant("apgd-restart-keeps-grad", "attacks", A + "apgd.py",
           "grad=it.where_b(reduce, grad_best, grad)", "grad=grad", "apgd"),
    Mutant("apgd-oscillation-strict", "attacks", A + "apgd.py",
           "oscillating = n_increase.astype(jnp.float32) <= k.astype(",
           "oscillating = n_increase.astype(jnp.float32) < k.astype(", "apgd"),
    Mutant("apgd-stall-rule", "attacks", A + "apgd.py",
           "stalled = ~s[\"reduced_last_check\"] & ",
           "stalled = s[\"reduced_last_check\"] & ", "apgd"),
    Mutant("apgd-first-window", "attacks", A + "apgd.py",
           "k = max(int(0.22 * steps), 1)", "k = max(int(0.25 * steps), 1)",
           "apgd"),
    Mutant("apgd-window-decrease", "attacks", A + "apgd.py",
           "decrease = max(int(0.03 * steps), 1)",
           "decrease = max(int(0.05 * steps), 1)", "apgd_schedule"),
    Mutant("apgd-best-adv-when-correct", "attacks", A + "apgd.py",
           "x_best_adv = it.where_b(~correct, x_new, s[\"x_best_adv\"])",
           "x_best_adv = it.where_b(correct, x_new, s[\"x_best_adv\"])",
           "apgd"),
    Mutant("apgd-start-not-on-sphere", "attacks", A + "apgd.py",
           "x_adv = x + radius * t / it.expand(it.linf_norm(t), t)",
           "x_adv = x + radius * t", "apgd"),
    Mutant("apgd-history-from-start", "attacks", A + "apgd.py",
           "loss_prev=jnp.zeros((batch,), jnp.float32)",
           "loss_prev=loss_i", "apgd"),
    Mutant("pgd-l2-radius", "attacks", A + "pgd.py",
           "delta = delta * jnp.where(n > eps, eps / jnp.where(n > 0, n, 1.0)",
           "delta = delta * jnp.where(n > eps, 2 * eps / jnp.where(n > 0, n, "
           "1.0)", "pgd_l2"),
    Mutant("pgd-l2-unnormalised-step", "attacks", A + "pgd.py",
           "  return _safe_normalize(g)", "  return g", "pgd_l2"),
    Mutant("fab-linf-room-swapped", "attacks", A + "fab.py",
           "room = jnp.where(towards_one, 1.0 - t, t)",
           "room = jnp.where(towards_one, t, 1.0 - t)", "fab_projection"),
    Mutant("fab-l2-radius-weights", "attacks", A + "fab.py",
           "lam = _smallest_radius(jnp.where(active, w * w, 0.0), r, c)",
           "lam = _smallest_radius(jnp.where(active, jnp.abs(w), 0.0), r, c)",
           "fab_projection"),
    Mutant("square-l2-slack-per-channel", "attacks", A + "square.py",
           "jnp.maximum(eps ** 2 - norm_image ** 2, 0.0) / channels",
           "jnp.maximum(eps ** 2 - norm_image ** 2, 0.0)", "square_l2"),
    Mutant("square-eta-weights", "attacks", A + "square.py",
           "+= 1.0 / (k + 1) ** 2", "+= 1.0 / (k + 1)", "square_l2"),
    Mutant("apgd-l2-unnormalised-step", "attacks", A + "apgd.py",
           "z = _project(x_adv + ss * g / (it.expand(it.l2_norm(g), g) + 1e-12), x,",
           "z = _project(x_adv + ss * g, x,", "apgd_l2"),
    Mutant("dlr-denominator", "attacks", A + "losses.py",
           "return -margin / (top[:, 0] - top[:, 2] + 1e-12)",
           "return -margin / (top[:, 0] - top[:, 1] + 1e-12)", "attack_losses"),
    Mutant("targeted-dlr-denominator", "attacks", A + "losses.py",
           "0.5 * (top[:, 2] + top[:, 3])", "top[:, 2]", "attack_losses"),
    Mutant("cw-sign", "attacks", A + "losses.py",
           "return _max_other_logit(z, labels) - _label_logit(z, labels)",
           "return _label_logit(z, labels) - _max_other_logit(z, labels)",
           "attack_losses"),
    Mutant("kl-direction", "attacks", A + "losses.py",
           "return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)",
           "return jnp.sum(jnp.exp(log_q) * (log_q - log_p), axis=-1)",
           "attack_losses"),
    Mutant("fab-eta", "attacks", A + "fab.py", "ETA = 1.05", "ETA = 1.0",
           "fab"),
    Mutant("fab-beta", "attacks", A + "fab.py", "BETA = 0.9", "BETA = 1.0",
           "fab"),
    Mutant("fab-alpha-max", "attacks", A + "fab.py", "ALPHA_MAX = 0.1",
           "ALPHA_MAX = 0.2", "fab"),
    Mutant("fab-alpha-swapped", "attacks", A + "fab.py",
           "alpha = jnp.clip(a1 / (a1 + a0), 0.0, alpha_max)",
           "alpha = jnp.clip(a0 / (a1 + a0), 0.0, alpha_max)", "fab"),
    Mutant("fab-keeps-any-adversarial", "attacks", A + "fab.py",
           "better = is_adv & (dist < s[\"best\"])", "better = is_adv", "fab"),
    Mutant("fab-boundary-sign", "attacks", A + "fab.py",
           "b = -f + jnp.sum(w * x1.reshape(batch, -1), 1)",
           "b = f + jnp.sum(w * x1.reshape(batch, -1), 1)", "fab"),
    Mutant("square-step-eps", "attacks", A + "square.py",
           "new = best_e + window * (2.0 * eps * signs)",
           "new = best_e + window * (1.0 * eps * signs)", "square"),
    Mutant("square-keeps-only-lower", "attacks", A + "square.py",
           "take = (lower | (margin <= 0.0)) & active", "take = lower & active",
           "square", equivalent="the loss is the margin itself, so a "
           "misclassifying candidate (margin <= 0) of an active point "
           "(margin > 0) always lowers the loss"),
    Mutant("square-fooled-keep-querying", "attacks", A + "square.py",
           "active = s[\"margin\"] > 0.0", "active = s[\"margin\"] > -1e30",
           "square"),
    Mutant("square-p-threshold", "attacks", A + "square.py",
           "P_THRESHOLDS = (10, 50, 200,", "P_THRESHOLDS = (10, 40, 200,",
           "square"),
    Mutant("square-side-floor", "attacks", A + "square.py",
           "side = int(round(math.sqrt(p * height * width)))",
           "side = int(math.sqrt(p * height * width))", "square"),
    # ----------------------------------------------------------- objectives
    Mutant("trades-beta-1", "objectives", OBJ,
           "loss = natural + beta * robust", "loss = natural + 1.0 * robust",
           "objectives"),
    Mutant("mart-no-kl", "objectives", OBJ,
           "loss = adv_term + beta * robust", "loss = adv_term",
           "objectives"),
    Mutant("trades-kl-swapped", "objectives", OBJ,
           "robust = jnp.mean(attacks.kl_divergence(logits, adv_logits))",
           "robust = jnp.mean(attacks.kl_divergence(adv_logits, logits))",
           "objectives"),
    Mutant("trades-ce-on-adv", "objectives", OBJ,
           "natural = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(\n"
           "        logits.astype(jnp.float32), y))",
           "natural = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(\n"
           "        adv_logits.astype(jnp.float32), y))", "objectives"),
    Mutant("trades-no-third-pass", "objectives", OBJ,
           "    stats = replay_natural(stats)\n", "", "objectives"),
    Mutant("mart-1.0001", "objectives", OBJ,
           "- jnp.log(1.0001 - jnp.take_along_axis(",
           "- jnp.log(1.01 - jnp.take_along_axis(", "objectives"),
    Mutant("mart-wrong-class-always-second", "objectives", OBJ,
           "wrong = jnp.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])",
           "wrong = top2[:, -2]", "objectives"),
    Mutant("mart-weight-p-true", "objectives", OBJ,
           "robust = jnp.mean(kl * (1.0000001 - true_probs))",
           "robust = jnp.mean(kl * true_probs)", "objectives"),
    Mutant("mart-weight-constant", "objectives", OBJ,
           "robust = jnp.mean(kl * (1.0000001 - true_probs))",
           "robust = jnp.mean(kl * (1.0 - true_probs))", "objectives",
           equivalent="1.0000001 is 1.0 in float32 (the weight is computed "
           "in float32), so the reference's guard constant changes no bit"),
    Mutant("mart-kl-direction", "objectives", OBJ,
           "kl = jnp.sum(nat_probs * (jnp.log(nat_probs + 1e-12)\n"
           "                              - jnp.log(adv_probs + 1e-12)), axis=-1)",
           "kl = jnp.sum(adv_probs * (jnp.log(adv_probs + 1e-12)\n"
           "                              - jnp.log(nat_probs + 1e-12)), axis=-1)",
           "objectives"),
    Mutant("mart-bce-on-natural", "objectives", OBJ,
           "bce = (optax.softmax_cross_entropy_with_integer_labels(adv_logits, y)",
           "bce = (optax.softmax_cross_entropy_with_integer_labels(logits, y)",
           "objectives"),
    Mutant("mart-adv-pass-from-old-stats", "objectives", OBJ,
           "    logits, stats = _apply(model, params, batch_stats, x, True)\n"
           "    adv_logits, stats = _apply(model, params, stats, x_adv, True)\n"
           "    logits, adv_logits",
           "    logits, stats = _apply(model, params, batch_stats, x, True)\n"
           "    adv_logits, stats = _apply(model, params, batch_stats, x_adv, "
           "True)\n    logits, adv_logits", "objectives"),
    Mutant("ce-on-clean", "objectives", OBJ,
           "inputs = x if x_adv is None else x_adv", "inputs = x",
           "objectives"),
    Mutant("ce-eval-mode", "objectives", OBJ,
           "logits, new_stats = _apply(model, params, batch_stats, inputs, True)",
           "logits, new_stats = _apply(model, params, batch_stats, inputs, "
           "True)\n    logits = _apply(model, params, batch_stats, inputs, "
           "False)", "objectives"),
    # ---------------------------------------------------------- weightspace
    Mutant("interp-ignores-b", "weightspace", WS + "interpolate.py",
           "return ((1 - t) * x.astype(dtype) + t * y.astype(dtype))",
           "return ((1 - t) * x.astype(dtype) + t * x.astype(dtype))",
           "interpolation"),
    Mutant("interp-swapped", "weightspace", WS + "interpolate.py",
           "return ((1 - t) * x.astype(dtype) + t * y.astype(dtype))",
           "return (t * x.astype(dtype) + (1 - t) * y.astype(dtype))",
           "interpolation"),
    Mutant("barrier-left-endpoint", "weightspace", WS + "curves.py",
           "\"barrier\": float(loss[peak] - 0.5 * (l0 + l1))",
           "\"barrier\": float(loss[peak] - l0)", "barrier"),
    Mutant("barrier-chord-swapped", "weightspace", WS + "curves.py",
           "linear = loss - ((1 - t) * l0 + t * l1)",
           "linear = loss - (t * l0 + (1 - t) * l1)", "barrier"),
    Mutant("barrier-extrapolated-points", "weightspace", WS + "curves.py",
           "inside = (t >= 0.0) & (t <= 1.0)", "inside = t >= 0.0", "barrier"),
    Mutant("ties-count-election", "weightspace", WS + "arithmetic.py",
           "jnp.sign(jnp.sum(stack, 0)) for path",
           "jnp.sign(jnp.sum(jnp.sign(stack), 0)) for path", "ties"),
    Mutant("ties-zero-sum-merges-to-zero", "weightspace", WS + "arithmetic.py",
           "sign = jnp.where(signs[path] == 0, majority, signs[path])",
           "sign = signs[path]", "ties"),
    Mutant("ties-keeps-ceil", "weightspace", WS + "arithmetic.py",
           "return min(k + 1, n) if scope",
           "return max(k, 1) if scope", "ties"),
    Mutant("ties-sum-not-mean", "weightspace", WS + "arithmetic.py",
           "out[path] = jnp.where(count > 0, total / jnp.maximum(count, 1), 0",
           "out[path] = jnp.where(count > 0, total, 0", "ties"),
    Mutant("ties-mean-over-all", "weightspace", WS + "arithmetic.py",
           "total / jnp.maximum(count, 1), 0",
           "total / len(trimmed), 0", "ties"),
    Mutant("ties-threshold-off-by-one", "weightspace", WS + "arithmetic.py",
           "return jnp.sort(flat)[flat.size - k]",
           "return jnp.sort(flat)[flat.size - k - 1]", "ties"),
    Mutant("dare-rescale-multiplies", "weightspace", WS + "arithmetic.py",
           "(kept / (1.0 - p)).astype(v.dtype)",
           "(kept * (1.0 - p)).astype(v.dtype)", "dare"),
    Mutant("dare-keep-p", "weightspace", WS + "arithmetic.py",
           "jax.random.fold_in(key, i), 1.0 - p, v.shape)",
           "jax.random.fold_in(key, i), p, v.shape)", "dare"),
    Mutant("apply-ignores-coefficient", "weightspace", WS + "arithmetic.py",
           "d = fd[path] if coefficient == 1.0 else fd[path] * coefficient",
           "d = fd[path]", "ties"),
    # ------------------------------------------------------------------ rws
    Mutant("rws-projection-sign", "rws", RWS + "signatures.py",
           "return (d - (float(np.vdot(d, s)) / norm2) * s)",
           "return (d + (float(np.vdot(d, s)) / norm2) * s)", "rws"),
    Mutant("rws-projection-unnormalised", "rws", RWS + "signatures.py",
           "return (d - (float(np.vdot(d, s)) / norm2) * s)",
           "return (d - float(np.vdot(d, s)) * s)", "rws"),
    Mutant("rws-clean-robust-swapped", "rws", RWS + "signatures.py",
           "v = project_out(np.asarray(fc[path], np.float64) - pre,\n"
           "                    np.asarray(fs[path], np.float64) - pre)",
           "v = project_out(np.asarray(fs[path], np.float64) - pre,\n"
           "                    np.asarray(fc[path], np.float64) - pre)", "rws"),
    Mutant("rws-reference-coefficient-linear", "rws", RWS + "signatures.py",
           "return [(float(alpha) / count) ** 2] * count",
           "return [float(alpha) / count] * count", "rws"),
    Mutant("rws-reference-alpha-no-sqrt", "rws", RWS + "batchnorm.py",
           "sum(np.sqrt(abs(float(c))) for c in coefficients)",
           "sum(abs(float(c)) for c in coefficients)", "rws"),
    Mutant("rws-quantize-floor", "rws", RWS + "signatures.py",
           "codes = np.clip(np.rint((x64 - low) / step), 0, levels)",
           "codes = np.clip(np.floor((x64 - low) / step), 0, levels)", "rws"),
    Mutant("rws-quantize-levels", "rws", RWS + "signatures.py",
           "levels = (1 << bits) - 1", "levels = 1 << bits", "rws"),
    Mutant("rws-compose-ignores-coefficient", "rws", RWS + "signatures.py",
           "total[path] = total.get(path, 0.0) + c * v.astype(np.float64)",
           "total[path] = total.get(path, 0.0) + v.astype(np.float64)", "rws"),
    Mutant("rws-scale-keeps-low", "rws", RWS + "signatures.py",
           "quant = {p: (low * c, step * c)", "quant = {p: (low, step * c)",
           "rws"),
    Mutant("rws-average-first-model", "rws", RWS + "batchnorm.py",
           "avg = _mean(robust_flat) if chosen else {}",
           "avg = robust_flat[0] if chosen else {}", "rws_average"),
    # ----------------------------------------------------------------- rift
    Mutant("mrc-absolute-radius", "rift", RIFT + "mrc.py",
           "limit = epsilon * jnp.linalg.norm(reference.ravel())",
           "limit = epsilon", "rift"),
    Mutant("mrc-always-rescale", "rift", RIFT + "mrc.py",
           "return delta * jnp.minimum(1.0, limit / jnp.maximum(norm, 1e-30))",
           "return delta * (limit / jnp.maximum(norm, 1e-30))", "rift"),
    Mutant("mrc-descent", "rift", RIFT + "mrc.py",
           "return {k: delta[k] + lr * mask[k] * g[k] for k in delta}",
           "return {k: delta[k] - lr * mask[k] * g[k] for k in delta}", "rift"),
    Mutant("mrc-not-minus-base", "rift", RIFT + "mrc.py",
           "record = {\"module\": module, \"mrc\": worst[0] - base[0],",
           "record = {\"module\": module, \"mrc\": worst[0],", "rift"),
    Mutant("mrc-last-not-worst", "rift", RIFT + "mrc.py",
           "      if ep_loss > worst[0]:", "      if True:", "rift"),
    Mutant("mrc-no-projection", "rift", RIFT + "mrc.py",
           "      delta = project_all(flat, delta)\n      ep_loss",
           "      ep_loss", "rift"),
    Mutant("rift-interpolation-swapped", "rift", RIFT + "selection.py",
           "return interp_lib.interpolate_variables(robust, finetuned, alpha,",
           "return interp_lib.interpolate_variables(finetuned, robust, alpha,",
           "interpolation"),
    # ---------------------------------------------------------- corruptions
    Mutant("gaussian-noise-severity-shift", "data/corruptions",
           COR + "noise.py", "sigma = GAUSSIAN_SIGMA[severity - 1]\n  return",
           "sigma = GAUSSIAN_SIGMA[min(severity, 4)]\n  return",
           "gaussian_noise"),
    Mutant("shot-noise-rate", "data/corruptions", COR + "noise.py",
           "SHOT_RATE = (500, 250, 100, 75, 50)",
           "SHOT_RATE = (500, 250, 80, 75, 50)", "shot_noise"),
    Mutant("impulse-amount", "data/corruptions", COR + "noise.py",
           "flipped = jax.random.uniform(k_flip, x.shape) < amount",
           "flipped = jax.random.uniform(k_flip, x.shape) < 2 * amount",
           "impulse_noise"),
    Mutant("speckle-additive", "data/corruptions", COR + "noise.py",
           "return jnp.clip(x + x * sigma * jax.random.normal(key, x.shape), 0, 1)",
           "return jnp.clip(x + sigma * jax.random.normal(key, x.shape), 0, 1)",
           "speckle_noise"),
    Mutant("gaussian-blur-sigma", "data/corruptions", COR + "blur.py",
           "GAUSSIAN_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)",
           "GAUSSIAN_SIGMA = (0.4, 0.6, 0.7, 0.9, 1.0)", "gaussian_blur"),
    Mutant("zoom-ends", "data/corruptions", COR + "blur.py",
           "ZOOM_ENDS = (1.06, 1.11, 1.16, 1.21, 1.26)",
           "ZOOM_ENDS = (1.06, 1.11, 1.16, 1.21, 1.31)", "zoom_blur"),
    Mutant("brightness", "data/corruptions", COR + "digital.py",
           "BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)",
           "BRIGHTNESS = (0.05, 0.1, 0.15, 0.25, 0.3)", "brightness"),
    Mutant("contrast", "data/corruptions", COR + "digital.py",
           "CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)",
           "CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.2)", "contrast"),
    Mutant("pixelate", "data/corruptions", COR + "digital.py",
           "PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)",
           "PIXELATE = (0.95, 0.9, 0.8, 0.75, 0.65)", "pixelate"),
    Mutant("jpeg-quality", "data/corruptions", COR + "digital.py",
           "JPEG_QUALITY = (80, 65, 58, 50, 40)",
           "JPEG_QUALITY = (80, 65, 58, 50, 30)", "jpeg_compression"),
    Mutant("fog", "data/corruptions", COR + "weather.py",
           "FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))",
           "FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2.5), (1.5, 1.75))",
           "fog"),
    Mutant("frost", "data/corruptions", COR + "weather.py",
           "FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))",
           "FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.7, 0.45))",
           "frost"),
]


def check(mutants: list[Mutant]) -> list[str]:
  """Problems with the list: a snippet absent or not unique, a no-op
  mutation, a mutated file that does not compile, an unknown selection."""
  problems = []
  seen = set()
  for m in mutants:
    if m.id in seen:
      problems.append(f"{m.id}: duplicate id")
    seen.add(m.id)
    if m.selection not in SELECTIONS:
      problems.append(f"{m.id}: unknown selection {m.selection!r}")
    source = (ROOT / m.path).read_text()
    count = source.count(m.original)
    if count != 1:
      problems.append(f"{m.id}: original occurs {count} times in {m.path}")
      continue
    if m.original == m.mutated:
      problems.append(f"{m.id}: the mutation changes nothing")
    try:
      compile(source.replace(m.original, m.mutated), m.path, "exec")
    except SyntaxError as err:
      problems.append(f"{m.id}: mutated file does not compile: {err}")
  return problems


def _copy_repo(dest: pathlib.Path) -> None:
  """The tracked and untracked, not ignored, files; ``data`` by link (it
  holds the decoded dataset cache, which mutants never touch)."""
  files = subprocess.run(
      ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
      cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
  for rel in files:
    if not rel or rel.startswith("data/"):
      continue
    src = ROOT / rel
    if not src.is_file():
      continue
    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest / rel)
  os.symlink(ROOT / "data", dest / "data")


def _pytest(copy: pathlib.Path, selection: str, timeout: float
            ) -> tuple[int, float, str]:
  """(exit status, seconds, first failing test) of the selection's tests
  in ``copy``; status -1 on timeout."""
  env = dict(os.environ, PYTHONPATH=str(copy),
             PYTHONDONTWRITEBYTECODE="1")
  start = time.time()
  try:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-rf", "-p",
         "no:cacheprovider", *SELECTIONS[selection]], cwd=copy, env=env,
        capture_output=True, text=True, timeout=timeout)
    rc = proc.returncode
    failed = [line.split(" ")[1] for line in proc.stdout.splitlines()
              if line.startswith("FAILED ")]
    first = failed[0] if failed else ""
  except subprocess.TimeoutExpired:
    rc, first = -1, "timeout"
  return rc, time.time() - start, first


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--module", help="only mutants of this score group")
  parser.add_argument("--only", help="only mutants whose id contains one "
                      "of these comma-separated strings")
  parser.add_argument("--list", action="store_true", help="list, run nothing")
  parser.add_argument("--check", action="store_true",
                      help="check that every snippet applies, run nothing")
  parser.add_argument("--min-score", type=float, default=90.0)
  parser.add_argument("--timeout", type=float, default=600.0,
                      help="seconds per test run (a timeout counts as killed)")
  parser.add_argument("--no-baseline", action="store_true",
                      help="skip running each selection unmutated first")
  args = parser.parse_args(argv)

  problems = check(MUTANTS)
  if problems or args.check:
    print("\n".join(problems) or f"{len(MUTANTS)} mutants apply cleanly")
    return 1 if problems else 0
  mutants = [m for m in MUTANTS
             if (not args.module or m.module == args.module)
             and (not args.only or any(o and o in m.id
                                       for o in args.only.split(",")))]
  if args.list:
    for m in mutants:
      print(f"{m.module:18} {m.id:34} {m.path} [{m.selection}]"
            + (f" (equivalent: {m.equivalent})" if m.equivalent else ""))
    return 0
  if not mutants:
    print("no mutant matches")
    return 1

  start = time.time()
  results: list[tuple[Mutant, bool, int, float]] = []
  with tempfile.TemporaryDirectory(prefix="robustjax-mutation-") as tmp:
    copy = pathlib.Path(tmp)
    _copy_repo(copy)
    if not args.no_baseline:
      for selection in sorted({m.selection for m in mutants}):
        rc, secs, _ = _pytest(copy, selection, args.timeout)
        print(f"baseline {selection}: exit {rc} ({secs:.0f} s)", flush=True)
        if rc != 0:
          print(f"the unmutated tests of {selection} fail; fix them first")
          return 2
    for m in mutants:
      target = copy / m.path
      pristine = target.read_text()
      target.write_text(pristine.replace(m.original, m.mutated))
      try:
        rc, secs, first = _pytest(copy, m.selection, args.timeout)
      finally:
        target.write_text(pristine)
      killed = rc != 0
      results.append((m, killed, rc, secs))
      print(f"{'killed  ' if killed else 'SURVIVED'} {m.module:18} {m.id:34} "
            f"exit {rc:2d} {secs:5.0f} s {first}", flush=True)

  print(f"\nper module (score = killed / (mutants - equivalent)), "
        f"{time.time() - start:.0f} s in all:")
  failed = False
  for module in dict.fromkeys(m.module for m, *_ in results):
    rows = [r for r in results if r[0].module == module]
    equivalent = [r for r in rows if r[0].equivalent and not r[1]]
    killed = sum(1 for r in rows if r[1])
    scored = len(rows) - len(equivalent)
    score = 100.0 * killed / scored if scored else 100.0
    failed |= score < args.min_score
    print(f"  {module:18} {killed:3d} / {scored:3d} killed  {score:5.1f}%"
          + (f"  ({len(equivalent)} equivalent)" if equivalent else ""))
  survivors = [r for r in results if not r[1]]
  if survivors:
    print("survivors:")
    for m, *_ in survivors:
      reason = m.equivalent or "NOT EQUIVALENT: add a test that kills it"
      print(f"  {m.id} ({m.path}): {reason}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
