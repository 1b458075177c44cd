"""Distillation: recipes, the teacher/student model of one step, losses and the training loop."""
