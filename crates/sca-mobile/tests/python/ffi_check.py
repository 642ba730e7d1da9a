"""Drives sca-mobile through its generated Python bindings (the exact FFI surface the Kotlin and
Swift bindings use). Run by tests/python_ffi.rs:

    python3 ffi_check.py BINDINGS_DIR MODEL_DIR IMAGE.rgba WIDTH HEIGHT X Y MAX_NEW_TOKENS

Prints one JSON object with the results; exits non-zero on any unexpected behaviour.
"""

import json
import sys
import threading


def main():
    bindings, model_dir, rgba_path, w, h, x, y, new = sys.argv[1:9]
    sys.path.insert(0, bindings)
    import sca_mobile as m

    w, h, new = int(w), int(h), int(new)
    rgba = open(rgba_path, "rb").read()
    model = m.ScaModel.load(model_dir)
    emb = model.embed_rgba(rgba, w, h)
    assert list(emb.original_size()) == [h, w], emb.original_size()
    prompt = m.PromptInput(
        points=[m.PointInput(x=float(x), y=float(y), label=1)], box_xyxy=None, multimask=True
    )
    region = model.predict(emb, prompt, new, 1)

    class Pieces(m.CaptionListener):
        def __init__(self):
            self.pieces = []

        def on_piece(self, piece):
            self.pieces.append(piece)
            return True

    listener = Pieces()
    streamed = model.caption_stream(emb, prompt, new, listener)

    class StopAfterOne(m.CaptionListener):
        def __init__(self):
            self.n = 0

        def on_piece(self, piece):
            self.n += 1
            return False

    stopper = StopAfterOne()
    model.caption_stream(emb, prompt, new, stopper)

    errors = {}
    try:
        model.embed_rgba(b"\x00" * 10, 4, 4)
    except m.ScaError.Image as e:
        errors["image"] = str(e)
    try:
        bad = m.PromptInput(points=[], box_xyxy=[1.0, 2.0], multimask=True)
        model.predict(emb, bad, new, 1)
    except m.ScaError.Prompt as e:
        errors["prompt"] = str(e)
    try:
        far = m.PromptInput(
            points=[m.PointInput(x=1e9, y=1.0, label=1)], box_xyxy=None, multimask=True
        )
        model.predict(emb, far, new, 1)
    except m.ScaError.Prompt as e:
        errors["outside"] = str(e)
    try:
        m.ScaModel.load(model_dir + "/does-not-exist")
    except m.ScaError.Load as e:
        errors["load"] = str(e)

    # cancel() from another thread while a caption streams
    class Slow(m.CaptionListener):
        def __init__(self):
            self.n = 0

        def on_piece(self, piece):
            self.n += 1
            if self.n == 1:
                t = threading.Thread(target=model.cancel)
                t.start()
                t.join()
            return True

    slow = Slow()
    model.caption_stream(emb, prompt, new, slow)

    print(
        json.dumps(
            {
                "caption": region.caption,
                "tokens": list(region.tokens),
                "iou": list(region.iou),
                "masks": [[mk.height, mk.width, mk.area, mk.counts] for mk in region.masks],
                "box": list(region.box_xyxy),
                "streamed_caption": streamed.caption,
                "pieces": listener.pieces,
                "stopped_pieces": stopper.n,
                "cancelled_pieces": slow.n,
                "errors": errors,
            }
        )
    )


main()
