"""The page of ``usvl app`` (Gradio): drop an image, see and download what ``usvl predict`` gives for it.

Everything shown comes from :class:`~usvl.app.predictor.AppResult`, i.e. from the files ``usvl predict``'s writers
wrote for the image: the overlay PNG (mask contour, or the predicted class on the image), the ``p_<class>`` columns
(calibrated, decided at the stored threshold), a ``*sentence*``/``*report*`` column as the read-out sentence, every
other column as details, and the mask PNGs and JSON files for download. Errors are shown on the page as one line.
Gradio is imported here only (the ``app`` extra); analytics are off, nothing is shared and the page loads no web
fonts, so it works on a closed network.
"""

from __future__ import annotations

import html
import logging
import os
import socket
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402  (after turning its analytics off)

from usvl.app.predictor import UPLOAD_EXTENSIONS, AppPredictor, AppResult  # noqa: E402
from usvl.utils.errors import UserError  # noqa: E402

log = logging.getLogger(__name__)

SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "sans-serif")
"""The page's fonts: the browser's own, so no web font is requested (closed networks)."""
MONO_FONTS = ("ui-monospace", "monospace")


def header_markdown(predictor: AppPredictor) -> str:
    """The page's header: what is loaded and how it decides."""
    info = predictor.describe()
    if info["task"] == "classification":
        threshold = info["threshold"]
        decision = ("the argmax of the calibrated probabilities" if threshold is None
                    else f"p({info['class_names'][-1]}) >= {threshold:.4f}, the stored threshold")
        task = f"classification into {', '.join(info['class_names'])}; decision: {decision}"
    else:
        task = f"lesion segmentation; pixels with p >= {info['threshold']:g} form the mask"
    return (f"# usvl\n`{Path(info['checkpoint']).name}` ({info['encoder']}): {task}. "
            f"Drop an ultrasound image (PNG, JPEG or DICOM); it is predicted as `usvl predict` would.")


def headline_markdown(result: AppResult, index: int = 0) -> str:
    """The prediction of one row in words: class (and probability), area and threshold."""
    row = result.rows[index]
    probabilities = result.probabilities(index)
    prediction = row.get("prediction", "")
    parts = [f"## Prediction: {prediction}"]
    if result.task == "classification":
        if prediction in probabilities:
            parts.append(f"p({prediction}) = {probabilities[prediction]:.4f} (calibrated)")
        threshold = row.get("threshold")
        parts.append(f"decided at the stored threshold {float(threshold):.4f}" if threshold else "decided by argmax")
    else:
        if "lesion" in probabilities:
            parts.append(f"highest pixel probability {probabilities['lesion']:.4f}")
        if row.get("lesion_area_px"):
            area = f"lesion area {row['lesion_area_px']} px"
            if row.get("lesion_area_mm2"):
                area += f" ({row['lesion_area_mm2']} mm²)"
            parts.append(area)
    if len(result.rows) > 1:
        parts.append(f"{len(result.rows)} rows (frames): the first is shown; all are in the JSON")
    return parts[0] + "\n\n" + "; ".join(parts[1:])


def details_table(result: AppResult, index: int = 0) -> list[list[str]]:
    """``[column, value]`` rows of the details (descriptors and the rest), for the page's table."""
    return [[key, value] for key, value in result.details(index).items()]


def predict_upload(predictor: AppPredictor, upload: Any) -> tuple[Any, ...]:
    """The page's handler: predict the uploaded file and return the values of the result components.

    Returns:
        Status, headline, probabilities, sentence, overlay, details and downloads; on an error, the status holds its
        message (no traceback) and the other components are cleared.
    """
    if upload is None:
        return "", "", None, "", None, hidden_details(), None
    path = Path(upload if isinstance(upload, str | os.PathLike) else getattr(upload, "name", upload))
    try:
        result = predictor.predict(path)
    except (UserError, ValueError, OSError, KeyError) as error:
        log.warning("Prediction of %s failed: %s", path.name, error, exc_info=True)
        return error_status(str(error)), "", None, "", None, hidden_details(), None
    except Exception as error:  # noqa: BLE001  (any failure is shown as a message, never as a traceback)
        log.exception("Prediction of %s failed", path.name)
        return error_status(f"{type(error).__name__}: {error}"), "", None, "", None, hidden_details(), None
    sentence = result.sentence()
    return (f"Predicted **{html.escape(result.name)}**.", headline_markdown(result), result.probabilities(),
            f"> {sentence}" if sentence else "", str(result.overlays[0]) if result.overlays else None,
            details_component(details_table(result)), [str(path) for path in result.downloads()])


def details_component(rows: list[list[str]]) -> gr.Dataframe:
    """The details table with ``rows``, shown only when there are any."""
    return gr.Dataframe(value=rows or None, visible=bool(rows))


def hidden_details() -> gr.Dataframe:
    """The details table, emptied and hidden."""
    return details_component([])


def error_status(message: str) -> str:
    """The status line of a failed prediction."""
    return f"**Error:** {html.escape(message.splitlines()[0] if message else 'unknown error')}"


def build_page(predictor: AppPredictor) -> gr.Blocks:
    """The Gradio page of a loaded predictor (not launched); Gradio's copies of the files are deleted after an hour."""
    with gr.Blocks(title="usvl", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(header_markdown(predictor), elem_id="usvl-header")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Ultrasound image (PNG, JPEG or DICOM)", file_count="single",
                                 file_types=sorted(UPLOAD_EXTENSIONS), type="filepath", elem_id="usvl-upload")
                status = gr.Markdown(elem_id="usvl-status")
                headline = gr.Markdown(elem_id="usvl-prediction")
                probabilities = gr.Label(label="Probabilities (calibrated)" if predictor.task == "classification"
                                         else "Lesion probability (highest pixel)", show_heading=False,
                                         elem_id="usvl-probabilities")
                sentence = gr.Markdown(elem_id="usvl-sentence")
            with gr.Column(scale=2):
                overlay = gr.Image(label="Overlay (as written by usvl predict)", type="filepath", interactive=False,
                                   format="png", elem_id="usvl-overlay")
        details = gr.Dataframe(headers=["output", "value"], label="Descriptors and other outputs",
                               interactive=False, visible=False, elem_id="usvl-details")
        downloads = gr.File(label="Downloads: result JSON" + (" and mask" if predictor.task == "segmentation" else ""),
                            file_count="multiple", interactive=False,
                            elem_id="usvl-downloads")
        upload.upload(lambda file: predict_upload(predictor, file), inputs=upload,
                      outputs=[status, headline, probabilities, sentence, overlay, details, downloads])
    return page


def serve(predictor: AppPredictor, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> gr.Blocks:
    """Launch the page on ``host:port`` (no share link, no analytics, no web fonts).

    Args:
        predictor: The loaded model.
        host: Address to listen on.
        port: Port; 0 picks a free one.
        block: Serve until interrupted; else return once the server runs (``page.local_url`` says where).
    """
    if not port:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    page = build_page(predictor)
    theme = gr.themes.Default(font=list(SYSTEM_FONTS), font_mono=list(MONO_FONTS))
    page.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block,
                inbrowser=False, theme=theme, ssr_mode=False, allowed_paths=[str(predictor.workdir)])
    return page
