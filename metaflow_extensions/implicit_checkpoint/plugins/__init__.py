STEP_DECORATORS_DESC = [("checkpoint", ".checkpoint_decorator.CheckpointDecorator")]
CLIS_DESC = [("checkpoint", ".checkpoint_cli.cli")]
