"""`python -m optimum_snp [options]` is `snp-prune [options]`; with no options, the embedded digits default."""

from .cli import main


if __name__ == "__main__":
    raise SystemExit(main())
