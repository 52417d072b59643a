"""FedAvg on mnist-5k under Dirichlet label skew: α = 0.1 must learn worse than α = 0.5.

The expected degradation of non-IID data (Hsu et al. 2019; NIID-Bench): with the same
clients, rounds and seed, stronger skew means client deltas that point in different
directions and a lower global accuracy after the same number of rounds.
"""

from __future__ import annotations

import pytest

from simulations.runner import run_scenario
from simulations.scenario import Scenario


def _scenario(alpha: float) -> Scenario:
    return Scenario.model_validate(
        {
            "name": f"skew-{alpha}",
            "seed": 1,
            "data": {"dataset": "mnist-5k", "partitioner": "dirichlet", "alpha": alpha},
            "fleet": {
                "devices": 20,
                "profiles": {
                    "smart-home-hub": {
                        "share": 1.0,
                        "availability": 1.0,
                        "dropout": 0.0,
                        "speed_spread": 0.0,
                        "train_samples_per_s": 1e6,
                    }
                },
                "links": {"wifi": {"down_mbps": 100.0, "up_mbps": 100.0}},
            },
            "learning": {
                "rounds": 8,
                "clients_per_round": 10,
                "strategies": ["fedavg"],
                "deadline_s": 1e6,
                "local_epochs": 2,
            },
            "rollout": {"policy": {"target": {"groups": ["home"]}}},
        }
    )


@pytest.mark.slow
def test_fedavg_degrades_with_stronger_label_skew() -> None:
    accuracy = {}
    for alpha in (0.5, 0.1):
        run = run_scenario(_scenario(alpha)).strategies["fedavg"]
        accuracy[alpha] = run["final_accuracy"]
        assert run["client_updates"] == 8 * 10
    print(f"fedavg mnist-5k 20 clients x 8 rounds: final accuracy {accuracy}")
    assert accuracy[0.5] > 0.6  # it learns under moderate skew...
    assert accuracy[0.1] < accuracy[0.5] - 0.03  # ...and measurably worse under strong skew
