"""The ``minsharp`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch

from minsharp.data.digits import load_digits
from minsharp.errors import MinsharpError
from minsharp.measures.minimum_sharpness import minimum_sharpness
from minsharp.models import mlp
from minsharp.train import TrainingConfig, accuracy, train_classifier


def demo(args: argparse.Namespace) -> None:
    """Train a small ReLU MLP on scikit-learn's digits and print its Minimum Sharpness."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    (train_x, train_y), (test_x, test_y) = load_digits(seed=args.seed)
    model = mlp(train_x.shape[1], args.hidden, 10)
    config = TrainingConfig(epochs=args.epochs, seed=args.seed)
    print(
        f"Training MLP {'-'.join(map(str, [64, *args.hidden, 10]))} on digits "
        f"({len(train_y)} train / {len(test_y)} test images), {config.epochs} epochs of SGD…"
    )
    start = time.perf_counter()
    history = train_classifier(model, train_x, train_y, config)
    trained = time.perf_counter() - start
    print(
        f"  done in {trained:.1f} s: train accuracy {accuracy(model, train_x, train_y):.3f}, "
        f"test accuracy {accuracy(model, test_x, test_y):.3f}, final loss {history.loss[-1]:.4f}"
    )
    result = minimum_sharpness(model, (train_x, train_y), progress=args.progress)
    optimal = result.optimal_traces() if result.alphas is not None else {}
    print(f"\nPer-layer Hessian traces over the {result.num_examples} training images:")
    columns = ("Tr H_W", "Tr H_b", "alpha*", "Tr H_W(a*)", "Tr H_b(a*)")
    header = f"{'layer':>6} " + " ".join(f"{column:>11}" for column in columns)
    print(header)
    print("-" * len(header))
    for name, weight in result.weight_traces.items():
        alpha = result.alphas[name] if result.alphas else float("nan")
        at_optimum = optimal.get(name, (float("nan"), float("nan")))
        print(
            f"{name:>6} {weight:11.5g} {result.bias_traces[name]:11.5g} {alpha:11.4f} "
            f"{at_optimum[0]:11.5g} {at_optimum[1]:11.5g}"
        )
    print(
        f"\nTr H (as trained)   {result.trace:.6g}\n"
        f"Minimum Sharpness   {result.value:.6g}"
        f"{'' if result.attained else '  (infimum, not attained)'}\n"
        f"certificate         {result.certificate.method}, "
        f"|grad F|/F = {result.certificate.relative_gradient_norm:.1e}, "
        f"{result.certificate.iterations} Newton steps\n"
        f"time                {result.seconds:.2f} s for Minimum Sharpness "
        f"(training {trained:.1f} s)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``minsharp`` command."""
    parser = argparse.ArgumentParser(
        prog="minsharp", description="Scale-invariant sharpness of neural-network minima."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo", help="train a small MLP on the bundled digits and measure Minimum Sharpness"
    )
    demo_parser.add_argument("--epochs", type=int, default=40, help="training epochs (40)")
    demo_parser.add_argument(
        "--hidden", type=int, nargs="+", default=[64, 32], help="hidden widths (64 32)"
    )
    demo_parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    demo_parser.add_argument("--threads", type=int, default=2, help="CPU threads (2)")
    demo_parser.add_argument("--progress", action="store_true", help="show progress bars")
    demo_parser.set_defaults(run=demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except MinsharpError as error:
        print(f"minsharp: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
