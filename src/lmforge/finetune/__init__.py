"""Fine-tuning strategies (which weights train: full, frozen, PEFT adapters, QLoRA), optimizer
parameter groups and schedules, and knowledge distillation."""
