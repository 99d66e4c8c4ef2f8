"""Best of N."""

from __future__ import annotations

from ..core.select import CRITERIA, DEFAULT_PENALTY, best_of_n
from .comfy_types import DIAGNOSIS, ComfyInputError, diagnoses, image_batch
from .spec import In, NodeSpec, Out


def best_of_n_node(images, diagnosis, criterion="overall", w_alignment=1.0, w_aesthetics=1.0,
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
    return (imgs[best : best + 1].clone(), int(best), top, ranking.table)


BEST_OF_N = NodeSpec(
    key="BestOfN",
    display="Best of N",
    subcategory="select",
    description="Rank a diagnosed batch and pick the best image. overall: the overall score; weighted: "
    "sum(w*score)/sum(w) over present scores; defect_penalty: overall - penalty*sum(importance)/100. "
    "Ties: fewer/lighter defects, then lower index.",
    inputs=[
        In("images", "IMAGE", "The batch to choose from (e.g. 16 KSampler outputs)."),
        In("diagnosis", DIAGNOSIS, "DIAGNOSIS of exactly this batch."),
        In("criterion", "COMBO", "Ranking criterion (see the node description).", options=list(CRITERIA),
           default="overall"),
        In("w_alignment", "FLOAT", "Weight of alignment (weighted criterion).", default=1.0, min=0.0, max=10.0,
           step=0.05),
        In("w_aesthetics", "FLOAT", "Weight of aesthetics (weighted criterion).", default=1.0, min=0.0, max=10.0,
           step=0.05),
        In("w_plausibility", "FLOAT", "Weight of plausibility (weighted criterion).", default=1.0, min=0.0,
           max=10.0, step=0.05),
        In("w_overall", "FLOAT", "Weight of overall (weighted criterion).", default=1.0, min=0.0, max=10.0,
           step=0.05),
        In("penalty", "FLOAT", "defect_penalty: score lost per 100 importance points of defects.",
           default=DEFAULT_PENALTY, min=0.0, max=10.0, step=0.01),
        In("top_k", "INT", "How many of the best images to return in rank order.", default=4, min=1, max=4096),
    ],
    outputs=[
        Out("best_image", "IMAGE", "The best image [1,H,W,C]."),
        Out("best_index", "INT", "Its index in the input batch."),
        Out("top_k_images", "IMAGE", "The top-K images, best first."),
        Out("ranking", "STRING", "Ranking table."),
    ],
    fn=best_of_n_node,
)

SPECS = [BEST_OF_N]
