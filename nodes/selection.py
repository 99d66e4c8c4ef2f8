"""Best of N."""

from __future__ import annotations

from ..core.select import CRITERIA, DEFAULT_PENALTY, best_of_n
from . import panels
from .comfy_io import Diagnosis, io
from .comfy_types import ComfyInputError, diagnoses, image_batch

WEIGHTS = ("w_alignment", "w_aesthetics", "w_plausibility", "w_overall")
W_MAX = 10.0


def _weight(name: str, tooltip: str):
    return io.Float.Input(name, default=1.0, min=0.0, max=W_MAX, step=0.05, tooltip=tooltip)


class BestOfN(io.ComfyNode):
    """Rank a diagnosed batch; the panel under the node shows the ranking."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ImageDoctorBestOfN",
            display_name="Best of N",
            category="ImageDoctor/select",
            description="Rank a diagnosed batch and pick the best image. overall: the overall score; weighted: "
            "sum(w*score)/sum(w) over present scores; defect_penalty: overall - penalty*sum(importance)/100. "
            "Ties: fewer/lighter defects, then lower index. The node shows the ranking.",
            inputs=[
                io.Image.Input("images", tooltip="The batch to choose from (e.g. 16 KSampler outputs)."),
                Diagnosis.Input("diagnosis", tooltip="DIAGNOSIS of exactly this batch."),
                io.Combo.Input("criterion", options=list(CRITERIA), default="overall",
                               tooltip="Ranking criterion (see the node description)."),
                _weight("w_alignment", "Weight of alignment (weighted criterion)."),
                _weight("w_aesthetics", "Weight of aesthetics (weighted criterion)."),
                _weight("w_plausibility", "Weight of plausibility (weighted criterion)."),
                _weight("w_overall", "Weight of overall (weighted criterion)."),
                io.Float.Input("penalty", default=DEFAULT_PENALTY, min=0.0, max=10.0, step=0.01,
                               tooltip="defect_penalty: score lost per 100 importance points of defects."),
                io.Int.Input("top_k", default=4, min=1, max=4096,
                             tooltip="How many of the best images to return in rank order."),
            ],
            outputs=[
                io.Image.Output("best_image", display_name="best_image", tooltip="The best image [1,H,W,C]."),
                io.Int.Output("best_index", display_name="best_index", tooltip="Its index in the input batch."),
                io.Image.Output("top_k_images", display_name="top_k_images", tooltip="The top-K images, best first."),
                io.String.Output("ranking", display_name="ranking", tooltip="Ranking table."),
            ],
        )

    @classmethod
    def validate_inputs(cls, criterion="overall", w_alignment=1.0, w_aesthetics=1.0, w_plausibility=1.0,
                        w_overall=1.0):
        if criterion not in CRITERIA:
            return f"criterion must be one of {list(CRITERIA)}, got {criterion!r}"
        weights = dict(zip(WEIGHTS, (w_alignment, w_aesthetics, w_plausibility, w_overall)))
        for name, w in weights.items():  # naming an input here turns off ComfyUI's own range check
            if w is not None and not 0.0 <= float(w) <= W_MAX:
                return f"{name} must be between 0 and {W_MAX}, got {w}"
        if criterion == "weighted" and all(w is not None and float(w) == 0.0 for w in weights.values()):
            return "criterion 'weighted' needs at least one weight above 0"
        return True

    @classmethod
    def execute(cls, images, diagnosis, criterion="overall", w_alignment=1.0, w_aesthetics=1.0,
                w_plausibility=1.0, w_overall=1.0, penalty=DEFAULT_PENALTY, top_k=4):
        imgs = image_batch(images, "images")
        diags = diagnoses(diagnosis, "diagnosis", size=(imgs.shape[1], imgs.shape[2]))
        if len(diags) != imgs.shape[0]:
            raise ComfyInputError(
                f"input 'diagnosis' has {len(diags)} diagnoses but 'images' has {imgs.shape[0]}; "
                "diagnose the same batch you rank"
            )
        if criterion not in CRITERIA:
            raise ComfyInputError(f"input 'criterion' must be one of {list(CRITERIA)}, got {criterion!r}")
        weights = {"alignment": w_alignment, "aesthetics": w_aesthetics, "plausibility": w_plausibility,
                   "overall": w_overall}
        try:
            ranking = best_of_n(diags, criterion, weights=weights, penalty=penalty, top_k=top_k)
        except ValueError as exc:
            raise ComfyInputError(str(exc)) from exc
        best = ranking.best
        top = imgs[ranking.top_k].clone()
        ui = panels.ui(panels.ranking_panel(ranking, diags), text=ranking.table)
        return io.NodeOutput(imgs[best : best + 1].clone(), int(best), top, ranking.table, ui=ui)


NODES = [BestOfN]
