STEP_DECORATORS_DESC = [("checkpoint", ".checkpoint_decorator.CheckpointDecorator")]
