"""The framework registry (conformance/frameworks.py): one record per framework, read by name."""

from __future__ import annotations

from importlib import metadata

import pytest

from conformance import frameworks
from conformance.adapters import ADAPTERS


def test_every_built_in_adapter_points_at_a_registered_record() -> None:
    for adapter in ADAPTERS:
        assert frameworks.get(adapter.framework.name) is adapter.framework, adapter.name
    assert {f.name for f in frameworks.known()} >= {"numpy", "torch", "tensorflow", "jax"}


def test_versions_come_from_package_metadata_without_an_import() -> None:
    assert frameworks.version_of("numpy") == metadata.version("numpy")
    assert frameworks.version_of("no-such-framework-here") is None
    tensorflow = frameworks.get("tensorflow")
    assert tensorflow is not None and tensorflow.distributions == ("tensorflow", "tensorflow-cpu")


def test_the_environment_a_process_that_runs_a_framework_starts_with() -> None:
    jax = frameworks.get("jax")
    assert jax is not None and dict(jax.environment_defaults) == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    tensorflow = frameworks.get("tensorflow")
    assert tensorflow is not None
    assert dict(tensorflow.environment_defaults) == {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    keras_tensorflow = frameworks.get("keras-tensorflow")  # its child gets what TensorFlow's processes get
    assert keras_tensorflow is not None and keras_tensorflow.environment_defaults == tensorflow.environment_defaults


def test_one_name_one_record() -> None:
    first = frameworks.register(frameworks.Framework("registry-test", "Registry test"))
    assert frameworks.register(frameworks.Framework("registry-test", "Registry test")) is first
    with pytest.raises(ValueError, match="two different frameworks are both named 'registry-test'"):
        frameworks.register(frameworks.Framework("registry-test", "Another title"))


def test_an_adapter_naming_its_framework_by_a_string_is_refused_where_it_is_written() -> None:
    from conformance.adapters import Adapter

    with pytest.raises(
        TypeError, match=r"Old\.framework is 'mybuild': it must be a conformance\.frameworks\.Framework"
    ):

        class Old(Adapter):  # (the pre-registry spelling of an adapter)
            framework = "mybuild"  # type: ignore[assignment]


def test_a_front_end_names_its_backend_and_says_what_is_missing() -> None:
    keras_jax = frameworks.get("keras-jax")
    assert keras_jax is not None and keras_jax.backend == "jax" and keras_jax.all_markers == ("keras-jax", "keras")
    assert keras_jax.backend_version() == frameworks.version_of("jax")
    assert "jax" in keras_jax.packages and "keras" in keras_jax.packages
    absent = frameworks.Framework("nothing-here", "Nothing", ("no-such-distribution-anywhere",))
    assert absent.missing() == "Nothing is not installed (pip: no-such-distribution-anywhere)"
    orphan = frameworks.Framework("orphan", "Keras on nothing", ("numpy",), backend="no-such-distribution-anywhere")
    assert orphan.missing() == "Keras on nothing needs no-such-distribution-anywhere, which is not installed"
    assert frameworks.NUMPY.missing() is None
