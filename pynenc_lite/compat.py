"""pynenc's names that mean something else here, or nothing: every compatibility table in one
place, and the one "accepted but ignored" warning.

pynenc programs carry settings, task options and section names that pynenc_lite either maps
onto its own (a rename), or accepts without acting on: a pynenc program must keep working
when only the module name changes, and a user must be told, once, what is ignored. The
tables were learnt from pynenc's `pynenc/conf/*.py`, its task options and its Redis and
MongoDB plugins.

This module holds names only: `conf` reads settings with them and `options` task options.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)

# --- configuration settings ----------------------------------------------------------------
# Names learnt from pynenc's pynenc/conf/*.py and the pynenc_redis and pynenc_mongo plugins.
# cistell, pynenc's config library, names a section after its config class, lower-cased and
# without "Config" (ConfigThreadRunner -> [tool.pynenc.threadrunner]); its env variables keep
# the class name (PYNENC__CONFIGTHREADRUNNER__MAX_THREADS), so both spellings are accepted.
PYNENC_SECTIONS = frozenset(
    {"pynenc", "sqlite", "redis", "mongo", "sharedmemory", "task", "runner", "runnersqlite",
     "threadrunner", "multithreadrunner", "persistentprocessrunner", "processrunner"}
    | {component + backend
       for component in ("orchestrator", "broker", "statebackend", "argcache",
                         "clientdatastore", "trigger")
       for backend in ("", "sqlite", "redis", "mongo")}
)
# Runner sections apply only to their runner class and its subclasses, as pynenc's config
# classes do (ConfigMultiThreadRunner and ConfigPersistentProcessRunner extend
# ConfigThreadRunner; pynenc's ProcessRunner reads only ConfigRunner): the sections each
# `runner_cls` spelling reads, most general first.
RUNNER_SECTIONS = frozenset(
    {"runner", "runnersqlite", "threadrunner", "multithreadrunner", "persistentprocessrunner",
     "processrunner"}
)
RUNNER_SECTION_CHAINS = {
    "threadrunner": ("runner", "runnersqlite", "threadrunner"),
    "multithreadrunner": ("runner", "runnersqlite", "threadrunner", "multithreadrunner"),
    "persistentprocessrunner": ("runner", "runnersqlite", "threadrunner",
                                "persistentprocessrunner"),
    "processrunner": ("runner", "runnersqlite", "processrunner"),
}
# pynenc names with the same meaning as one of our fields under another name.
PYNENC_RENAMES = {"max_processes": "runner_processes", "num_processes": "runner_processes"}
# pynenc names with the same meaning in other units: name -> (our field, factor).
# A runner silent for runner_considered_dead_after_minutes is dead, and its work runs again:
# here that is a lease that ran out.
PYNENC_SCALED = {"runner_considered_dead_after_minutes": ("lease_seconds", 60.0),
                 "runner_heartbeat_timeout_minutes": ("lease_seconds", 60.0)}
# pynenc names that mean nothing here: accepted, ignored, warned about once.
PYNENC_ONLY_SETTINGS = frozenset({
    # ConfigPynenc
    "trigger_cls", "serializer_cls", "client_data_store_cls", "arg_cache_cls",
    "trigger_task_modules", "print_arguments", "cached_status_time", "compact_log_context",
    "truncate_log_ids",
    "log_use_colors", "log_format", "max_pending_seconds",
    "recover_pending_invocations_cron", "recover_running_invocations_cron",
    "atomic_service_interval_minutes",
    "atomic_service_spread_margin_minutes", "atomic_service_check_interval_minutes",
    "atomic_service_execution_retention_minutes", "atomic_service_execution_max_records",
    "atomic_service_max_start_slot_fraction", "atomic_service_min_run_margin_seconds",
    "atomic_service_membership_stabilization_minutes",
    "atomic_service_runner_considered_dead_after_minutes",
    # ConfigOrchestrator, ConfigBroker, ConfigArgCache, ConfigClientDataStore, ConfigTrigger
    "cycle_control", "blocking_control", "auto_final_invocation_purge_hours",
    "run_invocation_recovery_service_every_minutes", "recovery_service_spread_margin_minutes",
    "queue_timeout_sec", "queues", "priority_rules",
    "warn_on_queue_mismatch", "raise_on_queue_mismatch", "min_size_to_cache",
    "max_size_to_cache", "local_cache_size", "disable_client_data_store", "warn_threshold",
    "compression_enabled", "scheduler_interval_seconds", "enable_scheduler",
    "max_events_batch_size", "event_retention_days", "event_auto_purge_enabled",
    "event_max_records", "trigger_run_max_records",
    # ConfigRunner and its ThreadRunner / MultiThreadRunner subclasses
    "invocation_wait_results_sleep_time_sec", "runner_loop_sleep_time_sec",
    "min_parallel_slots", "recovery_service_check_interval_minutes", "min_threads",
    "final_invocation_cache_size", "min_processes", "idle_timeout_process_sec",
    "enforce_max_processes",
    # ConfigTask (per-task options are decorator arguments here)
    "parallel_batch_size", "retry_for", "max_retries", "running_concurrency",
    "registration_concurrency", "key_arguments", "on_diff_non_key_args_raise",
    "call_result_cache", "disable_cache_args", "is_workflow_task",
    "reroute_on_concurrency_control",
    # ConfigSharedMemory, ConfigRedis (+ Redis components), ConfigMongo
    "shared_memory_size_mb", "shared_memory_name_prefix", "shared_memory_cleanup_timeout_sec",
    "redis_url", "redis_host", "redis_port", "redis_db", "redis_username", "redis_password",
    "socket_timeout", "socket_connect_timeout", "health_check_interval",
    "max_connection_attempts", "redis_pool_max_connections",
    "redis_pool_health_check_interval", "max_pending_resolution_threads",
    "redis_retry_max_attempts", "redis_retry_base_delay_sec", "redis_retry_max_delay_sec",
    "pagination_batch_size", "mongo_username", "mongo_password", "mongo_host", "mongo_port",
    "mongo_db", "mongo_url", "mongo_auth_source", "mongo_pool_max_connections",
    "retry_base_delay", "retry_max_delay", "retry_max_time", "retry_indefinitely",
    "gridfs_threshold",
})
# Arguments and results are always pickled here, so these serializer choices change nothing.
PICKLE_SERIALIZERS = frozenset({"PickleSerializer", "JsonPickleSerializer"})

# --- task options --------------------------------------------------------------------------
# pynenc decorator options that pynenc_lite accepts without acting on them.
PYNENC_ONLY_TASK_OPTIONS = frozenset({
    "on_diff_non_key_args_raise",
    "call_result_cache",
    "disable_cache_args",
    "force_new_workflow",
    "parallel_batch_size",
})

# pynenc's task defaults given as settings ([tool.pynenc.task]) that are decorator options
# here: the warning says where they work.
TASK_OPTIONS_AS_SETTINGS = frozenset({
    "retry_for", "max_retries", "running_concurrency", "registration_concurrency",
    "key_arguments", "reroute_on_concurrency_control",
})

# --- the warning ---------------------------------------------------------------------------
# (kind, name) pairs already warned about: one warning per name per process, not one per
# Pynenc() or per task. Guarded by _warned_lock (apps may be made on several threads).
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def warn_ignored(kind: str, name: str, where: str) -> None:
    """Log, once per process for each name, that a pynenc `kind` ("setting", "task option")
    named `name` (given in `where`) is accepted but has no effect here."""
    with _warned_lock:
        if (kind, name) in _warned:
            return
        _warned.add((kind, name))
    if kind == "setting" and name in TASK_OPTIONS_AS_SETTINGS:
        logger.warning(
            "ignoring pynenc setting %r (from %s): in pynenc_lite it is a task option; give "
            "it in the decorator, @app.task(%s=...), where it takes effect",
            name,
            where,
            name,
        )
        return
    logger.warning(
        "ignoring pynenc %s %r (from %s): pynenc_lite accepts it for compatibility but has "
        "no use for it",
        kind,
        name,
        where,
    )
