from __future__ import annotations

from django.urls import path

from inference import apis

urlpatterns = [
    path("status/", apis.StatusApi.as_view(), name="status"),
    path("generate/", apis.GenerateApi.as_view(), name="generate"),
    path("jobs/", apis.JobCreateApi.as_view(), name="job-create"),
    path("jobs/<uuid:job_id>/", apis.JobDetailApi.as_view(), name="job-detail"),
]
