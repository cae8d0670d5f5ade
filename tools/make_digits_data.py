"""Write the digits test split (the demo model's evaluation data) as an .npz for `dfc eval`.

    python tools/make_digits_data.py digits_test.npz
"""

import argparse

import numpy as np

from dfc.models.digits_cnn import load_digits_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output .npz (images uint8 [N,8,8,1], labels)")
    ap.add_argument("--split", choices=["test", "train"], default="test")
    args = ap.parse_args()
    d = load_digits_split()
    np.savez_compressed(args.out, images=d[f"{args.split}_images"], labels=d[f"{args.split}_labels"])
    print(f"wrote {args.out}: {len(d[f'{args.split}_labels'])} images")


if __name__ == "__main__":
    main()
