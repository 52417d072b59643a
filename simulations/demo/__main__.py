"""``python -m simulations.demo`` (what ``make demo`` runs)."""

from simulations.demo.main import main

if __name__ == "__main__":
    raise SystemExit(main())
