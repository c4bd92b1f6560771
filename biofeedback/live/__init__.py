"""Running a session: straps and protocol on one clock, live metrics, readiness, LSL streams, replay."""
