"""The built-in offline task ``synthetic-arithmetic``: prompt/response pairs of column-by-column
arithmetic with chain-of-thought steps, generated deterministically from a seed.

    >>> from scaling.train.synthetic import synthetic_arithmetic
    >>> synthetic_arithmetic(2, difficulty=3, seed=0)[0]["prompt"]
"""

from __future__ import annotations

import random

SYNTHETIC = "synthetic-arithmetic"


OPS = "+-*"


def synthetic_arithmetic(
    n: int, *, difficulty: int, seed: int, ops: str = OPS
) -> list[dict[str, str]]:
    """``n`` prompt/response examples: ``a+b``, ``a-b`` (a ≥ b) or ``a*d`` (d one digit), the
    operation drawn from ``ops`` (the tiny backbones pre-train on ``+-`` only, so multiplication is
    a skill the fine-tuning must teach).

    Operands have 1 to ``difficulty`` digits. The response works column by column from the units, one
    line per column with its carry or borrow (each line's ``expr=value`` is true arithmetic), then the
    answer::

        Q: 482+39=
        2+9=11, write 1, carry 1
        8+3+1=12, write 2, carry 1
        4+0+1=5, write 5
        A: 521

    Example ``i`` comes from its own RNG keyed by ``(seed, i)``, so the first k of n examples are the
    same for every n ≥ k.
    """
    return [arithmetic_example(i, difficulty=difficulty, seed=seed, ops=ops) for i in range(n)]


def _operand(rng: random.Random, difficulty: int) -> int:
    digits = rng.randint(1, difficulty)
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


def _columns(a: int, b: int) -> list[tuple[int, int]]:
    """Digit pairs of ``a`` and ``b`` from the units up, the shorter padded with zeros."""
    width = max(len(str(a)), len(str(b)))
    return list(
        zip(map(int, str(a).zfill(width)[::-1]), map(int, str(b).zfill(width)[::-1]), strict=True)
    )


def _carry_steps(pairs: list[tuple[int, int]], op: str) -> list[str]:
    """Column steps of ``+`` (pairs of digits) or ``*`` (digit, multiplier), carrying to the next column."""
    steps, carry = [], 0
    for x, y in pairs:
        value = (x + y if op == "+" else x * y) + carry
        expr = f"{x}{op}{y}" + (f"+{carry}" if carry else "")
        steps.append(
            f"{expr}={value}, write {value % 10}" + (f", carry {value // 10}" * (value > 9))
        )
        carry = value // 10
    return steps + ([f"write {carry}"] if carry else [])


def _borrow_steps(pairs: list[tuple[int, int]]) -> list[str]:
    """Column steps of ``-``: a column that would go negative borrows 10 from the next one."""
    steps, borrow = [], 0
    for x, y in pairs:
        value = x - y - borrow
        expr = f"{x}-{y}" + ("-1" if borrow else "")
        borrow = int(value < 0)
        steps.append(f"1{expr}={value + 10}, borrow 1" if borrow else f"{expr}={value}")
    return steps


def arithmetic_example(i: int, *, difficulty: int, seed: int, ops: str = OPS) -> dict[str, str]:
    if not ops or set(ops) - set(OPS):
        raise ValueError(f"ops must be drawn from {OPS!r}; got {ops!r}")
    rng = random.Random(f"{SYNTHETIC}/{seed}/{i}")  # str seeds hash with SHA-512: stable everywhere
    op = rng.choice(ops)
    a = _operand(rng, difficulty)
    if op == "*":
        b = rng.randint(0, 9)
        steps, answer = _carry_steps([(x, b) for x, _ in _columns(a, 0)], "*"), a * b
    elif op == "+":
        b = _operand(rng, difficulty)
        steps, answer = _carry_steps(_columns(a, b), "+"), a + b
    else:
        a, b = sorted((a, _operand(rng, difficulty)), reverse=True)
        steps, answer = _borrow_steps(_columns(a, b)), a - b
    return {"prompt": f"Q: {a}{op}{b}=\n", "response": "\n".join(steps) + f"\nA: {answer}\n"}
