"""The card's quiet and hostile cases: a step that never saves, a step that saves once
with metadata full of markup, and (on a second run) a step that resumed from the
previous run's checkpoint with eager resume. `explicit` declares the checkpoint card
itself (no id); `end` has the card turned off."""

from metaflow import FlowSpec, card, checkpoint, current, step

HOSTILE = {
    "note": "<script>document.title='pwned'</script>" + "x" * 500,
    "nested": {"levels": [{"deeper": ["<b>bold</b>", {"k": "v" * 100}]}] * 10},
    "image": "<img src=x onerror=\"document.title='pwned'\">",
    "loss": 0.5,
}


class CardCasesFlow(FlowSpec):
    @checkpoint
    @step
    def start(self):
        self.nothing_saved = True
        self.next(self.train)

    @checkpoint(load_policy="eager")
    @step
    def train(self):
        self.value = 0
        if current.checkpoint.is_loaded:
            current.checkpoint.load()
        self.value += 1
        current.checkpoint.save(metadata=dict(HOSTILE, value=self.value))
        self.next(self.explicit)

    @card(type="implicit_checkpoint")
    @checkpoint
    @step
    def explicit(self):
        self.done = True
        current.checkpoint.save(metadata={"done": 1})
        self.next(self.end)

    @checkpoint(card=False)
    @step
    def end(self):
        pass


if __name__ == "__main__":
    CardCasesFlow()
