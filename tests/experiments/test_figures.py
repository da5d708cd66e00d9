"""Tables and figures a person can read: paper rows only beside the clients the paper reports,
one row order everywhere, integer round ticks, legends beside the curves, the best round
marked, every bar labelled, and masks outlined in contrasting colours."""

from pathlib import Path

import numpy as np
from matplotlib.colors import to_hex
from matplotlib.text import Text
from PIL import Image

from fedfms.experiments.report import (
    PREDICTION_COLOUR,
    ROWS_PER_PANEL,
    TRUTH_COLOUR,
    cost_table,
    loco_table,
    paper_table1,
    plot_client_bars,
    plot_dice_against_traffic,
    plot_overlays,
    plot_unseen_dice,
    row_order,
)
from fedfms.run.log import RunLog


def _cell(tmp_path, name, unseen, dice_per_round, best_round, mib=0.0):
    run_dir = tmp_path / name / unseen
    RunLog(run_dir).append({"kind": "eval", "round": r, "client": unseen, "role": "unseen", "dice": d}
                           for r, d in enumerate(dice_per_round, start=1))
    if mib:
        RunLog(run_dir).append([{"kind": "train", "round": 1, "client": "site-A", "bytes_received": mib * 2**20}])
    dice = dice_per_round[best_round - 1]
    return {"name": name, "unseen": unseen, "class_names": ["polyp"], "best_round": best_round,
            "run_dir": str(run_dir), "clients": {unseen: {"dice": dice, "iou": dice / 2, "dice_per_class": [dice],
                                                          "iou_per_class": [dice / 2]}}}


def test_paper_rows_appear_only_beside_the_clients_the_paper_reports(tmp_path):
    ours = [_cell(tmp_path, "FedMSA", "site-A", [0.5], 1)]
    assert [row[0] for row in loco_table(ours, paper="prostate")[1]] == ["FedMSA"]
    matched = [_cell(tmp_path, "FedMSA", "UCL", [0.5], 1)]
    header, rows = loco_table(matched, paper="prostate")
    assert [row[0] for row in rows] == ["FedMSA", "FedMSA (paper)"]
    ucl = paper_table1()["prostate"]["FedMSA"]["UCL"]
    assert rows[1][1:] == [f"{100 * ucl['dice']:.2f}", f"{100 * ucl['iou']:.2f}", "–", "–"]  # its Average: 6 clients


def test_rows_keep_one_order_in_tables_and_plots(tmp_path):
    names = ["Decoder", "FedDecoder", "FedDecoder-PT", "FedMSA", "MSA-PT"]
    assert row_order(names) == ["FedDecoder", "Decoder", "FedDecoder-PT", "FedMSA", "MSA-PT"]
    cells = [_cell(tmp_path, n, "cvc", [0.2, 0.4], 2) for n in sorted(names)]
    assert [row[0] for row in loco_table(cells)[1]] == row_order(names)
    fig = plot_unseen_dice(cells, tmp_path / "curves.png")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][:5] == row_order(names)


def test_round_curves_have_round_ticks_a_legend_beside_them_and_the_best_round_starred(tmp_path):
    cells = [_cell(tmp_path, "FedDecoder", "cvc", [0.3], 1), _cell(tmp_path, "FedDecoder-PT", "cvc", [0.0], 1)]
    fig = plot_unseen_dice(cells, tmp_path / "one_round.png")
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [1]
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1  # beside the curves at 0
    longer = [_cell(tmp_path / "b", "FedDecoder", "cvc", [0.1, 0.2, 0.5, 0.3], 3)]
    ax = plot_unseen_dice(longer, tmp_path / "four_rounds.png").axes[0]
    stars = [line for line in ax.get_lines() if line.get_marker() == "*" and len(line.get_xdata())]
    assert [(list(s.get_xdata()), list(s.get_ydata())) for s in stars] == [([3], [0.5])]


def test_a_local_row_keeps_its_colour_in_every_fold_and_every_row_is_in_the_legend_once(tmp_path):
    """Fold A has Local-B and Local-C, fold B Local-A and Local-C: a colour per panel's own order
    would draw Local-C in fold A with the colour the legend gives Local-A."""
    cells = [_cell(tmp_path, name, unseen, [0.1, 0.2], 2) for unseen, names in
             (("A", ["FedDecoder", "Local-B", "Local-C"]), ("B", ["FedDecoder", "Local-A", "Local-C"]))
             for name in names]
    fig = plot_unseen_dice(cells, tmp_path / "folds.png")
    colours = {}
    for ax in fig.axes[:2]:
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                colours.setdefault(line.get_label(), set()).add(to_hex(line.get_color()))
    assert all(len(c) == 1 for c in colours.values()) and len({c.pop() for c in colours.values()}) == 4
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert legend == ["FedDecoder", "Local-A", "Local-B", "Local-C", "best round (scored in the table)"]


def test_thirteen_rows_get_thirteen_colours_in_every_plot(tmp_path):
    """The brain-MRI FG fold has 13 rows; matplotlib's 10-colour cycle drew FednnU-Net in
    FedDecoder's blue."""
    names = ["FedDecoder", "Decoder", "FedDecoder-PT", "FedSAM", "SAM", "FedMSA", "MSA", "FedMSA-PT", "FedLoRA",
             "FedU-Net", "FednnU-Net", "Local-DU", "Local-HT"]
    cells = [_cell(tmp_path, n, "FG", [0.1 + k / 100, 0.2], 2) for k, n in enumerate(names)]
    panels = plot_unseen_dice(cells, tmp_path / "curves.png").axes
    assert len({to_hex(line.get_color()) for ax in panels for line in ax.get_lines()
                if not line.get_label().startswith("_")}) == 13
    bars = plot_client_bars(cells, tmp_path / "bars.png").axes[0]
    assert len({to_hex(bar.get_facecolor()) for bar in bars.patches}) == 13
    traffic = plot_dice_against_traffic(cells, tmp_path / "traffic.png").axes[0]
    assert len({to_hex(line.get_color()) for line in traffic.get_lines()}) == 13


def test_more_rows_than_a_panel_holds_are_drawn_one_panel_per_row_group_in_each_fold(tmp_path):
    """The prostate fold's 15 rows in one panel were unreadable: past ROWS_PER_PANEL rows each
    unseen client gets a row of panels, federated, centralized and each site alone, every curve
    in its own group's panel only, and one legend beside the first row."""
    names = ["FedDecoder", "Decoder", "FedDecoder-PT", "FedSAM", "SAM", "FedMSA", "MSA", "FedLoRA", "LoRA",
             "FedU-Net", "Local-DU"]
    cells = [_cell(tmp_path, n, unseen, [0.2, 0.3], 2) for unseen in ("FG", "HT") for n in names]
    fig = plot_unseen_dice(cells, tmp_path / "groups.png")
    drawn = {ax.get_title(): [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
             for ax in fig.axes}
    for unseen in ("FG", "HT"):
        assert drawn[f"unseen: {unseen}, federated"] == ["FedDecoder", "FedDecoder-PT", "FedSAM", "FedMSA", "FedLoRA",
                                                         "FedU-Net"]
        assert drawn[f"unseen: {unseen}, centralized"] == ["Decoder", "SAM", "MSA", "LoRA"]
        assert drawn[f"unseen: {unseen}, each site alone"] == ["Local-DU"]
    [legend] = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legend is fig.axes[2].get_legend() and len(legend.get_texts()) == len(names) + 1
    few = plot_unseen_dice(cells[:ROWS_PER_PANEL], tmp_path / "few.png")
    assert [ax.get_title() for ax in few.axes] == ["unseen: FG"]


def test_every_bar_is_labelled_with_its_value_a_zero_too(tmp_path):
    cells = [_cell(tmp_path, "FedDecoder", "cvc", [0.42], 1), _cell(tmp_path, "FedDecoder-PT", "cvc", [0.0], 1)]
    ax = plot_client_bars(cells, tmp_path / "bars.png").axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["0.00", "0.42"]


def test_overlays_outline_truth_and_prediction_in_contrasting_colours_with_a_legend(tmp_path):
    images = np.full((2, 32, 32, 3), [0.8, 0.3, 0.2])  # red-orange tissue
    truths = np.zeros((2, 1, 8, 8))
    truths[:, :, 1:3, 2:6] = 1  # the top quarter of the image
    predictions = {"FedDecoder": np.roll(truths, 1, axis=-1), "FedDecoder-PT": np.zeros_like(truths)}
    fig = plot_overlays(images, truths, predictions, tmp_path / "overlays.png")
    axes = np.array(fig.axes).reshape(2, 3)

    def outline_colours(ax):
        return sorted(to_hex(c.get_edgecolor()[0]) for c in ax.collections)

    assert outline_colours(axes[0, 0]) == [TRUTH_COLOUR]
    ys = np.concatenate([p.vertices[:, 1] for p in axes[0, 0].collections[0].get_paths()])
    assert 3 < ys.min() and ys.max() < 12  # on the image's rows 4-11, where the mask is
    assert outline_colours(axes[1, 1]) == sorted([TRUTH_COLOUR, PREDICTION_COLOUR])
    assert outline_colours(axes[1, 2]) == [TRUTH_COLOUR]  # an empty prediction draws no outline
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["ground truth", "prediction"]


def test_cost_table_gives_traffic_per_site_and_round_and_seconds_to_95_percent(tmp_path):
    federated = _cell(tmp_path, "FedDecoder", "site-C", [0.2, 0.5, 0.6], 3)
    RunLog(Path(federated["run_dir"])).append(
        [{"kind": "train", "round": r, "client": c, "bytes_received": 2 * 2**20 if c == "site-A" else 4 * 2**20}
         for r in (1, 2, 3) for c in ("site-A", "site-B")]
        + [{"kind": "round", "round": r, "seconds": s, "unseen_dice": d} for r, s, d in ((1, 10.0, 0.2), (2, 20.0, 0.58),
                                                                                         (3, 30.0, 0.6))])
    central = _cell(tmp_path, "Decoder", "site-C", [0.7], 1)
    RunLog(Path(central["run_dir"])).append([{"kind": "round", "round": 1, "seconds": 5.0, "unseen_dice": 0.7}])
    never = _cell(tmp_path, "FedDecoder-PT", "site-C", [0.0], 1)
    header, rows = cost_table([federated, central, never])
    assert header[2] == "MiB per site and round"
    # 0.58 >= 0.95 x 0.6 after round 2: 10 + 20 s; a site sends 3 MiB per round on average
    assert rows == [["FedDecoder", "60.00", "3.00", "30"], ["Decoder", "70.00", "0.00", "5"],
                    ["FedDecoder-PT", "0.00", "0.00", "–"]]
    plot_dice_against_traffic([federated, central, never], tmp_path / "traffic.png")
    with Image.open(tmp_path / "traffic.png") as png:
        assert png.size[0] > 300 and png.size[1] > 200


def test_a_row_run_on_fewer_folds_says_which_folds_its_average_covers(tmp_path):
    cells = [_cell(tmp_path, "FedDecoder", fold, [dice], 1) for fold, dice in (("A", 0.2), ("B", 0.4))]
    cells.append(_cell(tmp_path, "FedMSA", "A", [0.6], 1))
    rows = loco_table(cells)[1]
    assert rows == [["FedDecoder", "20.00", "10.00", "40.00", "20.00", "30.00", "15.00"],
                    ["FedMSA (A only)", "60.00", "30.00", "–", "–", "60.00", "30.00"]]
    assert [row[:2] for row in cost_table(cells)[1]] == [["FedDecoder", "30.00"], ["FedMSA (A only)", "60.00"]]


def test_labels_of_rows_with_the_same_traffic_and_close_dice_do_not_overlap(tmp_path):
    cells = [_cell(tmp_path, name, "site-C", [dice], 1) for name, dice in
             (("Decoder", 0.673), ("Local-kidney", 0.657), ("Local-prostate", 0.646), ("Local-liver", 0.30))]
    fig = plot_dice_against_traffic(cells, tmp_path / "close.png")
    fig.canvas.draw()
    boxes = {t.get_text(): Text.get_window_extent(t) for t in fig.axes[0].texts}  # the words, not the leader lines
    assert set(boxes) == {"Decoder", "Local-kidney", "Local-prostate", "Local-liver"}
    names = sorted(boxes)
    assert not any(boxes[a].overlaps(boxes[b]) for i, a in enumerate(names) for b in names[i + 1:])
    assert boxes["Decoder"].y0 > boxes["Local-kidney"].y0 > boxes["Local-prostate"].y0  # still in Dice order


def test_traffic_labels_cover_no_other_label_and_no_point(tmp_path):
    """The brain-MRI FG fold's rows: "SAM" at 0 MiB was drawn over FedU-Net's point at 6.2 MiB."""
    rows = {"FedSAM": (61.27, 37.41), "FedMSA": (44.57, 17.05), "FedMSA-PT": (6.34, 17.05),
            "FedLoRA": (39.03, 15.76), "MSA": (44.67, 0), "SAM": (59.20, 0), "FedDecoder": (21.41, 15.53),
            "Decoder": (26.14, 0), "FedDecoder-PT": (10.41, 15.53), "FedU-Net": (58.93, 6.24),
            "FednnU-Net": (62.20, 127.71), "Local-DU": (8.76, 0), "Local-HT": (18.24, 0)}
    cells = [_cell(tmp_path, name, "FG", [dice / 100], 1, mib) for name, (dice, mib) in rows.items()]
    fig = plot_dice_against_traffic(cells, tmp_path / "fg.png")
    fig.canvas.draw()  # measured at the figure's own dpi, not savefig's
    ax = fig.axes[0]
    boxes = {t.get_text(): Text.get_window_extent(t) for t in ax.texts}
    assert set(boxes) == set(rows)
    names = sorted(boxes)
    assert not [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if boxes[a].overlaps(boxes[b])]
    points = ax.transData.transform([(mib, dice) for dice, mib in rows.values()])
    assert not [(name, tuple(point)) for name, box in boxes.items() for point in points
                if box.expanded(1.0, 1.0).padded(3).contains(*point)]
    frame = ax.get_window_extent()
    assert all(frame.x0 <= box.x0 and box.x1 <= frame.x1 for box in boxes.values())  # inside the axes
