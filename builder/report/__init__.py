"""What a build, a check or a night reports, in the forms people and tools read:
`check_report` is the result of an Azure-readiness check (one line per requirement,
with evidence), `diff` compares two images, `nightly` the latest builds of an output
directory with what changed (`azbuild report`), `html` its self-contained page,
`junit` JUnit XML of builds, `summary` the summary.json of a several-template build,
and `table` the aligned terminal columns they share."""
