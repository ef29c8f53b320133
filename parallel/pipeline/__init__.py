"""Pipeline parallelism: schedules as tick tables (``schedule.py``) and their report (``report.py``).
Knows no models."""
from parallel.pipeline.schedule import (BWD, FWD, IDLE, SCHEDULES, Schedule, ScheduleError, bubble_formula,
                                        bubble_ratio, build, check, render)
from parallel.pipeline.report import executed_sent_bytes, format_pipeline, op_executions, pipeline_report

__all__ = ["BWD", "FWD", "IDLE", "SCHEDULES", "Schedule", "ScheduleError", "bubble_formula", "bubble_ratio",
           "build", "check", "executed_sent_bytes", "format_pipeline", "op_executions", "pipeline_report", "render"]
