from __future__ import annotations

from celery import shared_task

from inference import jobs


@shared_task(name="inference.run_generation_job", ignore_result=True, acks_late=True)
def run_generation_job(job_id: str) -> None:
    jobs.job_run(job_id=job_id)
