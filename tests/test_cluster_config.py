from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).parents[1] / "cluster.yaml"


def load():
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_passes_rays_validation():
    raw = load()
    validate_config(prepare_config(load()))
    nodes = raw["available_node_types"]
    assert nodes[raw["head_node_type"]]["resources"] == {"CPU": 0}  # trials never run on the head
    assert any("pip install" in c and "lth-sweeps" in c for c in raw["setup_commands"])
    assert any("LTH_STORAGE=s3://" in c for c in raw["setup_commands"])


@pytest.mark.parametrize("break_it", [lambda c: c.update(max_wrkers=3),
                                      lambda c: c.update(head_node_type="gpu"),
                                      lambda c: c["provider"].update(type="no-such-cloud")])
def test_rays_validation_catches_mistakes(break_it):
    raw = load()
    break_it(raw)
    with pytest.raises((ValueError, NotImplementedError, jsonschema.ValidationError)):
        validate_config(prepare_config(raw))
