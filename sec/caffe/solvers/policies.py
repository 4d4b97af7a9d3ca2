"""Caffe's learning-rate policies (SGDSolver::GetLearningRate), with Caffe's arithmetic.

Caffe computes some policies in float (its Dtype) and some in double: `inv`, `poly` and
`sigmoid` call the float overloads of pow/exp, while `step`, `exp` and `multistep` raise a float
gamma to an integer power, which C++11 promotes to double. The rate is then stored as float.
Both are followed here (numpy float32 where Caffe uses float), so the rates equal Caffe's bit
for bit rather than to rounding.

`current_step` is Caffe's SolverState.current_step: `step` sets it to iter / stepsize,
`multistep` advances it by at most one stepvalue per call (a repeated stepvalue takes one more
iteration to pass), the other policies leave it alone.
"""
import logging
import math

import numpy as np

log = logging.getLogger("sec.caffe.solver")

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
GAMMA_POLICIES = ("step", "exp", "inv", "multistep", "sigmoid")    # CHECK_GE(gamma, 0) in Caffe
STEPSIZE_POLICIES = ("step", "sigmoid")                           # CHECK_GT(stepsize, 0) in Caffe
F32 = np.float32


class PolicyError(ValueError):
    """An lr_policy Caffe does not know, or a field it needs out of Caffe's range."""


def check_policy(param):
    """Caffe's checks of GetLearningRate, made before training (PolicyError naming the field)."""
    policy = param.lr_policy
    if policy not in POLICIES:
        raise PolicyError(f"lr_policy '{policy}' is not one of {', '.join(POLICIES)}")
    if policy in GAMMA_POLICIES and param.gamma < 0:
        raise PolicyError(f"lr_policy '{policy}' needs gamma >= 0, got {param.gamma:g}")
    if policy in STEPSIZE_POLICIES and param.stepsize <= 0:
        raise PolicyError(f"lr_policy '{policy}' needs a positive 'stepsize', got {param.stepsize}")
    if policy == "poly" and param.max_iter <= 0:
        raise PolicyError(f"lr_policy 'poly' needs a positive 'max_iter', got {param.max_iter}")


def learning_rate(param, iteration, current_step=0):
    """(rate as Caffe's float, new current_step) at `iteration`; logs multistep's advances."""
    check_policy(param)
    policy, base = param.lr_policy, F32(param.base_lr)
    if policy == "fixed":
        rate = base
    elif policy == "step":
        current_step = iteration // param.stepsize
        rate = float(base) * math.pow(float(F32(param.gamma)), current_step)
    elif policy == "exp":
        rate = float(base) * math.pow(float(F32(param.gamma)), iteration)
    elif policy == "inv":
        rate = base * np.power(F32(1) + F32(param.gamma) * F32(iteration), -F32(param.power))
    elif policy == "multistep":
        if current_step < len(param.stepvalue) and iteration >= param.stepvalue[current_step]:
            current_step += 1
            log.info("MultiStep Status: Iteration %d, step = %d", iteration, current_step)
        rate = float(base) * math.pow(float(F32(param.gamma)), current_step)
    elif policy == "poly":
        rate = base * np.power(F32(1) - F32(iteration) / F32(param.max_iter), F32(param.power))
    else:   # sigmoid
        rate = base * (F32(1) / (F32(1) + np.exp(-F32(param.gamma) * (F32(iteration) - F32(param.stepsize)))))
    return float(F32(rate)), current_step
