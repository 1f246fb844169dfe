"""fulcra: SLACK, task-specific distillation and LUDVIG as one plugin framework (see docs/)."""
