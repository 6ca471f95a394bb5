"""For the people who run the worker: metrics, the HTTP endpoint, doctor, host telemetry."""
