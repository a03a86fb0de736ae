"""Rank helpers: every row to exactly one rank, and SLURM start-up without a rendezvous address."""
import pytest


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5, 7, 8, 16])
def test_rank_row_range_gives_every_row_to_exactly_one_rank_in_order(lavis_glscl, monkeypatch, world_size):
    from lavis_glscl import distributed

    for num_rows in range(0, 50):
        ranges = []
        for rank in range(world_size):
            monkeypatch.setattr(distributed, "world", lambda rank=rank: (rank, world_size))
            ranges.append(distributed.rank_row_range(num_rows))
        assert [row for start, end in ranges for row in range(start, end)] == list(range(num_rows)), ranges
        assert all(start <= end for start, end in ranges)
        assert all(ranges[r][1] == ranges[r + 1][0] for r in range(world_size - 1)), ranges
        assert max(end - start for start, end in ranges) == -(-num_rows // world_size)


def test_slurm_without_a_rendezvous_address_names_what_to_set(lavis_glscl):
    from omegaconf import OmegaConf

    from lavis_glscl.distributed import LaunchError, init_distributed

    environment = {"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1"}
    run_cfg = OmegaConf.create({"device": "cpu", "dist_url": "env://"})
    with pytest.MonkeyPatch.context() as patch:
        for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            patch.delenv(name, raising=False)
        for name, value in environment.items():
            patch.setenv(name, value)
        with pytest.raises(LaunchError, match="MASTER_ADDR and MASTER_PORT"):
            init_distributed(run_cfg)
    assert (run_cfg.rank, run_cfg.world_size, run_cfg.gpu) == (1, 4, 1)


def test_dist_url_and_dist_timeout_minutes_start_the_process_group(lavis_glscl, monkeypatch):
    """``run.dist_url: tcp://...`` (default env://) is the group's init method and ``run.dist_timeout_minutes: 7``
    (default 60) its timeout, as ``torch.distributed.init_process_group`` receives them."""
    import datetime

    import torch.distributed as dist
    from omegaconf import OmegaConf

    from lavis_glscl import distributed

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(dist, "barrier", lambda *args, **kwargs: None)
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    for name in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    run_cfg = OmegaConf.create({"device": "cpu", "dist_url": "tcp://127.0.0.1:23456", "dist_timeout_minutes": 7})
    distributed.init_distributed(run_cfg)
    (call,) = calls
    assert call["init_method"] == "tcp://127.0.0.1:23456" and call["store"] is None
    assert call["timeout"] == datetime.timedelta(minutes=7)
    assert (call["backend"], call["world_size"], call["rank"]) == ("gloo", 2, 0)
