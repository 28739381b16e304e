"""What is checked before anything starts: `regsweep train -m`'s overrides, and the database
driver a tracking URI needs."""

from __future__ import annotations

import importlib.util

import pytest
from omegaconf import OmegaConf

from regsweep import cli, tracking
from regsweep.config import RegsweepError


@pytest.mark.parametrize(
    "sweep, sentence",
    [
        (["model.dropoutt=0.1,0.2"], "model.dropoutt is not a setting"),
        (["model.dropout=0.1,0.2", "optim.lrr=range(1,3)"], "optim.lrr is not a setting"),
        (["model=demo_cnn,vgg16,resnett"], "model=resnett is not a known option: choose model= one of demo_cnn"),
    ],
)
def test_a_multirun_with_a_bad_key_or_option_is_one_sentence_before_any_run(sweep, sentence, tmp_path, capfd):
    capfd.readouterr()
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train", "-m", f"paths.store={tmp_path}", *sweep])
    _out, err = capfd.readouterr()
    assert stopped.value.code == 2
    assert err.strip().splitlines() == [err.strip()] and err.startswith(f"regsweep: error: {sentence}"), err[-3000:]
    assert not list(tmp_path.iterdir()), "no run started"


def test_a_database_tracking_uri_whose_driver_is_missing_names_the_package_to_install():
    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("mysqlclient is installed here")
    with pytest.raises(RegsweepError) as stopped:
        tracking.check_reachable(OmegaConf.create({"uri": "mysql://u:secret@127.0.0.1:1/db", "connect_timeout": 2}))
    assert str(stopped.value) == (
        "tracking.uri=mysql://u:***@127.0.0.1:1/db needs the database driver MySQLdb, which "
        "is not installed: pip install mysqlclient, or name an installed one in the URL "
        "(mysql+<driver>://...)"
    )
