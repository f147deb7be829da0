"""The launchers of a round on a real instance: the contributors sensor, the re-valuation schedule
and its continuation; the folder watcher. Each only launches what ``stages.next_step`` decides."""

import dagster as dg
import pytest
from PIL import Image

from attribution_pipeline.data.watch import watch_contributors
from attribution_pipeline.defs.build import build_definitions
from attribution_pipeline.defs.partitions import coalition_partitions
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.coalitions import EMPTY_KEY
from attribution_pipeline.runner import run_valuation
from attribution_pipeline.stages import gather_pool, read_plan
from attribution_pipeline.stages.round import split_work
from attribution_pipeline.storage.index import ingest
from attribution_pipeline.storage.results import ResultStore
from attribution_pipeline_tests.conftest import write_digit_contributors


class Tick:
    """Evaluate the sensor like the daemon does, carrying its cursor from tick to tick."""

    def __init__(self, workdir):
        self.layout = RunLayout.at(workdir)
        self.instance = dg.DagsterInstance.from_config(str(self.layout.dagster_home))
        self.defs = build_definitions(str(self.layout.workdir))
        self.sensor = self.defs.resolve_sensor_def("contributors_sensor")
        self.cursor = None

    def __call__(self):
        ctx = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, definitions=self.defs,
                                       resources=self.defs.resources)
        data = self.sensor.evaluate_tick(ctx)
        self.cursor = data.cursor
        return data

    def execute(self, request: dg.RunRequest) -> None:
        job = self.defs.resolve_job_def(request.job_name)
        result = job.execute_in_process(instance=self.instance, run_config=request.run_config, tags=request.tags)
        assert result.success

    def partitions(self, request: dg.RunRequest) -> list[str]:
        ordered = self.instance.get_dynamic_partitions(coalition_partitions.name)
        keys = request.partition_key_range
        return ordered[ordered.index(keys.start): ordered.index(keys.end) + 1]


@pytest.fixture
def valued(tiny_config, tmp_path):
    root = write_digit_contributors(tmp_path / "watched", classes=(0, 1, 7), per_class=20)
    cfg = tiny_config.override({"contributors_dir": str(root), "valuation": {"budget": 6},
                                "revaluation": {"policy": "incremental", "settle_seconds": 0}})
    assert run_valuation(cfg, quiet=True) == 0
    return cfg, root


def test_sensor_registers_a_newcomer_then_requests_exactly_the_missing_coalitions_then_the_table(valued):
    cfg, root = valued
    tick = Tick(cfg.workdir)
    first = tick()
    assert not first.run_requests and "up to date" in first.skip_message

    write_digit_contributors(root, classes=(4,), per_class=20)
    (root / "broken").mkdir()
    (root / "broken" / "zero.png").write_bytes(b"")  # a bad upload beside the good one: left out
    base = tick()
    assert [r.job_name for r in base.run_requests] == ["valuation_base"]
    snapshot = base.run_requests[0].run_config["resources"]["pipeline"]["config"]["snapshot"]
    assert sorted(snapshot) == ["digit_0", "digit_1", "digit_4", "digit_7"]
    again = tick()  # not launched yet: the same run key, which the daemon launches only once
    assert [r.run_key for r in again.run_requests] == [base.run_requests[0].run_key]
    tick.execute(base.run_requests[0])

    layout, store = tick.layout, ResultStore(tick.layout.database)
    ingest(layout.workdir, store)  # what the workers recorded, as the head indexes it before deciding
    missing = [k for k in gather_pool(cfg, layout, store).missing if k != EMPTY_KEY]
    plan = read_plan(layout)
    with_new = {c.key for c in plan.coalitions if "digit_4" in c.members}
    work = split_work(cfg, layout, [c for c in plan.coalitions if c.key in set(missing)])
    assert set(work.train) == with_new and len(with_new) == 8  # fine-tune only coalitions holding digit_4
    coalitions = tick()
    assert {r.job_name for r in coalitions.run_requests} == {"coalitions"}
    requested = [k for r in coalitions.run_requests for k in tick.partitions(r)]
    assert sorted(requested) == sorted(missing) and len(requested) == len(set(requested))

    # one range done: the next tick requests only the partitions still missing
    tick.execute(coalitions.run_requests[0])
    done = set(tick.partitions(coalitions.run_requests[0]))
    rest = tick()
    assert {k for r in rest.run_requests for k in tick.partitions(r)} == set(missing) - done
    for r in rest.run_requests:
        tick.execute(r)

    table = tick()
    assert [r.job_name for r in table.run_requests] == ["shapley"]
    tick.execute(table.run_requests[0])
    assert "up to date" in tick().skip_message
    rounds = store.query("SELECT contributors, base_predates FROM valuation_rounds ORDER BY computed_at")
    assert len(rounds) == 2 and rounds["base_predates"][1].to_list() == ["digit_4"]
    assert "broken" not in rounds["contributors"][1].to_list()


def test_a_registered_contributor_whose_folder_breaks_pauses_the_round(valued):
    cfg, root = valued
    tick = Tick(cfg.workdir)
    tick()
    (root / "digit_1" / "half.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    paused = tick()
    assert not paused.run_requests and "digit_1" in paused.skip_message and "fail validation" in paused.skip_message
    (root / "digit_1" / "half.png").unlink()
    assert "up to date" in tick().skip_message


def test_a_folder_is_validated_only_once_it_settles(tmp_path):
    root = tmp_path / "c"
    (root / "new").mkdir(parents=True)
    Image.new("L", (8, 8)).save(root / "new" / "a.png")
    w = watch_contributors(root, {}, now=1000.0, settle_seconds=60)
    assert w.settling == ["new"] and not w.accepted
    Image.new("L", (8, 8), 3).save(root / "new" / "b.png")  # still uploading: the clock restarts
    w = watch_contributors(root, w.state, now=1050.0, settle_seconds=60)
    assert w.settling == ["new"]
    w = watch_contributors(root, w.state, now=1111.0, settle_seconds=60)
    assert list(w.accepted) == ["new"] and any("validated 'new'" in e for e in w.events)
    (root / "empty").mkdir()
    w = watch_contributors(root, w.state, now=1200.0, settle_seconds=0)
    assert "no PNG/JPEG images" in w.rejected["empty"][0]
    w2 = watch_contributors(root, w.state, now=1300.0, settle_seconds=0)
    assert w2.events == []  # a verdict is reported once, until the folder changes


def test_sensor_is_on_by_default_and_can_be_turned_off(tmp_path):
    from attribution_pipeline.config import PipelineConfig
    from attribution_pipeline.storage.artifacts import atomic_write_bytes

    defs = build_definitions(str(tmp_path / "w"))
    assert defs.resolve_sensor_def("contributors_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    off = PipelineConfig().override({"workdir": str(tmp_path / "off"), "revaluation": {"sensor": False}})
    atomic_write_bytes(RunLayout.at(off.workdir).config_file, off.to_json().encode())
    defs = build_definitions(off.workdir)
    assert defs.resolve_sensor_def("contributors_sensor").default_status == dg.DefaultSensorStatus.STOPPED


def _run_success_event(result):
    return next(e for e in result.all_events if e.event_type_value == "PIPELINE_SUCCESS")


def test_schedule_starts_a_round_and_its_continuation_carries_it_through(valued):
    """With the contributors sensor off, a scheduled tick starts the round (the base run, from the
    same decision) and ``round_continuation`` requests each next step after each successful run."""
    from attribution_pipeline.defs.requests import LAUNCHED_BY_TAG
    from attribution_pipeline.storage.artifacts import atomic_write_bytes

    cfg, root = valued
    schedule = build_definitions(cfg.workdir).resolve_schedule_def("revaluation_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED  # listed, off without a cron
    with pytest.raises(ValueError, match="cron"):
        cfg.override({"revaluation": {"cron": "every monday"}})
    weekly = cfg.override({"revaluation": {"cron": "0 3 * * 1", "sensor": False}})
    atomic_write_bytes(RunLayout.at(cfg.workdir).config_file, weekly.to_json().encode())
    defs = build_definitions(cfg.workdir)
    schedule = defs.resolve_schedule_def("revaluation_schedule")
    assert schedule.cron_schedule == "0 3 * * 1" and schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    instance = dg.DagsterInstance.from_config(str(RunLayout.at(cfg.workdir).dagster_home))
    tick = dg.build_schedule_context(instance=instance, resources=defs.resources)
    assert "up to date" in schedule.evaluate_tick(tick).skip_message  # nothing changed: no round

    write_digit_contributors(root, classes=(4,), per_class=20)
    (root / "empty folder").mkdir()  # left out, with its reason, by the scheduled round
    requests = schedule.evaluate_tick(dg.build_schedule_context(instance=instance, resources=defs.resources)).run_requests
    assert [r.job_name for r in requests] == ["valuation_base"]
    assert sorted(requests[0].run_config["resources"]["pipeline"]["config"]["snapshot"]) == [
        "digit_0", "digit_1", "digit_4", "digit_7"]
    continuation = defs.resolve_sensor_def("round_continuation")
    jobs = []
    while requests:
        request = requests.pop(0)
        jobs.append(request.job_name)
        result = defs.resolve_job_def(request.job_name).execute_in_process(
            instance=instance, run_config=request.run_config, tags=request.tags)
        assert result.success and result.dagster_run.tags[LAUNCHED_BY_TAG] == "revaluation_schedule"
        if not requests:  # the last run of a step: the continuation asks for the next one
            ctx = dg.build_run_status_sensor_context(
                sensor_name="round_continuation", dagster_event=_run_success_event(result),
                dagster_instance=instance, dagster_run=result.dagster_run, resources=defs.resources)
            answer = continuation(ctx)
            assert not isinstance(answer, dg.SkipReason) or answer.skip_message.startswith("round "), answer
            requests = [] if isinstance(answer, dg.SkipReason) else list(answer)
    assert jobs[0] == "valuation_base" and jobs[-1] == "shapley" and "coalitions" in jobs
    latest = ResultStore(RunLayout.at(cfg.workdir).database).query(
        "SELECT DISTINCT contributor FROM latest_shapley_values ORDER BY 1")["contributor"].to_list()
    assert latest == ["digit_0", "digit_1", "digit_4", "digit_7"]


def test_an_invalid_work_directory_config_loads_and_the_sensor_logs_and_skips(tmp_path):
    """A config file edited by hand into an invalid state: the code location still loads, the
    sensor skips with the field named, and a launched run fails before any work."""
    import json

    layout = RunLayout.at(tmp_path / "work")
    layout.workdir.mkdir(parents=True)
    layout.config_file.write_text(json.dumps({"finetune": {"steps": "abc"}}))
    defs = build_definitions(str(layout.workdir))
    instance = dg.DagsterInstance.ephemeral()
    ctx = dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources)
    skipped = defs.resolve_sensor_def("contributors_sensor").evaluate_tick(ctx)
    assert not skipped.run_requests and "finetune.steps" in skipped.skip_message
    result = defs.resolve_job_def("valuation_base").execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "finetune.steps" in failure.step_failure_data.error.to_string()
    assert not layout.data_dir.exists()
