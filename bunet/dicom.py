"""DICOM in and out: a CT series folder as a :class:`~bunet.volume.Scan`, a mask as a DICOM
Segmentation object that references the source series.

    python -m bunet.dicom SCAN.nii.gz OUT_DIR    # write a NIfTI volume as a CT series (demo/tests)

Geometry follows DICOM PS3.3 C.7.6.2 and the convention nibabel and dcm2niix use for NIfTI:
voxel (i, j, k) = (column, row, slice); slices sorted by ImagePositionPatient projected on the
slice normal (row cosine x column cosine); the affine's columns are the row cosine times the
column spacing, the column cosine times the row spacing and the step between slice positions, in
DICOM's LPS patient space, turned to NIfTI's RAS+ by negating x and y.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from .volume import Scan, ScanError, scan_from_image, to_original

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
# slice positions may wobble by rounding in the stored decimal strings, not by more
SPACING_TOLERANCE = 0.01


@dataclass
class DicomScan:
    """A CT series loaded as a Scan, with its source datasets in slice order (for DICOM-SEG)."""

    scan: Scan
    datasets: list  # pydicom Datasets, sorted along the slice normal; index = voxel k
    series_uid: str


def is_dicom_folder(path: str | Path) -> bool:
    """True when ``path`` is a directory that directly holds at least one DICOM file."""
    path = Path(path)
    return path.is_dir() and any(_is_dicom(f) for f in sorted(path.iterdir()) if f.is_file())


def _is_dicom(f: Path) -> bool:
    from pydicom.misc import is_dicom

    try:
        return is_dicom(f)
    except OSError:
        return False


def list_series(folder: str | Path) -> dict[str, list]:
    """Image datasets (headers and pixels) of ``folder`` grouped by SeriesInstanceUID."""
    import pydicom

    folder = Path(folder)
    series: dict[str, list] = {}
    multiframe = 0
    for f in sorted(folder.iterdir()):
        if not f.is_file() or not _is_dicom(f):
            continue
        try:
            ds = pydicom.dcmread(f)
        except Exception as e:  # pydicom raises many types for damaged files
            raise ScanError(f"cannot read {f.name} as DICOM: {str(e).splitlines()[0] if str(e) else e}") from None
        if "PixelData" in ds and int(ds.get("NumberOfFrames", 1) or 1) > 1:
            multiframe += 1
            continue
        if "PixelData" not in ds or "ImagePositionPatient" not in ds:
            continue  # DICOMDIR, structured reports, presentation states: not slices
        series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    if not series and multiframe:
        raise ScanError(f"{folder} holds multi-frame (enhanced) DICOM images; BUNET reads single-frame CT series")
    return series


def load_series(folder: str | Path, series_uid: str | None = None) -> DicomScan:
    """Load the one CT series in ``folder`` (or the one named ``series_uid``) as HU."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ScanError(f"DICOM folder not found: {folder}")
    series = list_series(folder)
    if not series:
        raise ScanError(f"{folder} holds no DICOM image slices")
    if series_uid is None:
        if len(series) > 1:
            raise ScanError(
                f"{folder} holds {len(series)} series; choose one with --series UID: "
                + "; ".join(_describe(uid, dss) for uid, dss in sorted(series.items()))
            )
        series_uid = next(iter(series))
    elif series_uid not in series:
        raise ScanError(f"series {series_uid} is not in {folder}; it holds: {', '.join(sorted(series))}")
    datasets = series[series_uid]
    affine, datasets = _geometry(datasets, folder.name)
    try:
        hu = np.stack([_hu(ds) for ds in datasets], axis=-1).transpose(1, 0, 2)  # (col, row, slice)
    except Exception as e:  # missing decoder for a compressed transfer syntax, bad pixel data
        raise ScanError(f"cannot decode the pixels of {folder.name}: {str(e).splitlines()[0]}") from None
    img = nib.Nifti1Image(hu, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return DicomScan(scan_from_image(img, hu, folder.name), datasets, series_uid)


def _describe(uid: str, dss: list) -> str:
    ds = dss[0]
    what = " ".join(str(ds.get(k, "")) for k in ("Modality", "SeriesDescription") if ds.get(k, ""))
    return f"{uid} ({len(dss)} slices{', ' + what if what else ''})"


def _hu(ds: object) -> np.ndarray:
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return ds.pixel_array.astype(np.float32) * slope + intercept  # type: ignore[attr-defined]


def _geometry(datasets: list, name: str) -> tuple[np.ndarray, list]:
    """RAS+ affine of the series and its datasets sorted along the slice normal."""
    first = datasets[0]
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
    rows, cols = int(first.Rows), int(first.Columns)
    for ds in datasets:
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-4) or (
            int(ds.Rows),
            int(ds.Columns),
        ) != (rows, cols):
            raise ScanError(f"{name}: slices differ in orientation or size (a localizer or a tilted series?)")
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    pos = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    order = np.argsort(pos @ normal, kind="stable")
    datasets, pos = [datasets[i] for i in order], pos[order]
    d = np.diff(pos @ normal)
    if len(d) and (d.min() <= 0 or d.max() - d.min() > SPACING_TOLERANCE * d.mean() + 1e-3):
        raise ScanError(
            f"{name}: slice positions are duplicated or unevenly spaced "
            f"(steps {d.min():.3g}..{d.max():.3g} mm); more than one acquisition or missing slices?"
        )
    dr, dc = (float(v) for v in first.PixelSpacing)  # between rows, between columns
    step = (
        (pos[-1] - pos[0]) / (len(pos) - 1)
        if len(pos) > 1
        else normal * float(getattr(first, "SliceThickness", 1.0) or 1.0)
    )
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_cos * dc, col_cos * dr, step, pos[0]
    return LPS_TO_RAS @ lps, datasets


def write_seg(labels: np.ndarray, dscan: DicomScan, path: str | Path, *, model_name: str = "BUNET") -> None:
    """Write canonical lesion labels as a binary DICOM Segmentation over the source series."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from . import __version__

    frames = to_original(labels > 0, dscan.scan).transpose(2, 1, 0)  # (slice, row, col)
    desc = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="COVID-19 lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=model_name, version=__version__, family=codes.DCM.ArtificialIntelligence
        ),
        anatomic_regions=[codes.SCT.Lung],
    )
    seg = hd.seg.Segmentation(
        source_images=dscan.datasets,
        pixel_array=frames.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc],
        series_instance_uid=hd.UID(),
        series_number=9901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="BUNET",
        manufacturer_model_name=model_name,
        software_versions=__version__,
        device_serial_number="0",
        series_description="BUNET lesion segmentation",
        omit_empty_frames=False,
    )
    path = Path(path)
    tmp = path.with_name(".part-" + path.name)
    seg.save_as(tmp)
    tmp.replace(path)


def read_seg_labels(path: str | Path, dscan: DicomScan) -> np.ndarray:
    """Segment 1 of a DICOM-SEG as a uint8 array on the source series' grid (col, row, slice).

    Frames are matched to source slices by their SOP Instance UIDs (highdicom), not by order."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    uids = [str(ds.SOPInstanceUID) for ds in dscan.datasets]
    arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1], combine_segments=True)
    return np.ascontiguousarray(arr.transpose(2, 1, 0)).astype(np.uint8)


def write_series(
    volume_path: str | Path,
    out_dir: str | Path,
    *,
    slope: float = 1.0,
    intercept: float | None = None,
    shuffle_seed: int | None = None,
) -> list[Path]:
    """Write a NIfTI CT volume as a single-frame CT Image Storage series (one file a slice).

    For demos and tests: the inverse of :func:`load_series`, stored as unsigned 16-bit values
    through RescaleSlope/Intercept (intercept: -1024 or the scan's minimum). ``shuffle_seed``
    scrambles the file names' order against the slice order so readers cannot rely on it."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    img = nib.load(str(volume_path))
    data = np.asarray(img.dataobj, dtype=np.float64)
    lps = np.linalg.inv(LPS_TO_RAS) @ img.affine
    dc, dr = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    row_cos, col_cos = lps[:3, 0] / dc, lps[:3, 1] / dr
    if intercept is None:  # the usual -1024, lower when the scan has values below it
        intercept = float(min(-1024.0, np.floor(data.min())))
    stored = np.rint((data - intercept) / slope)
    if stored.min() < 0 or stored.max() > 65535:
        raise ScanError("values do not fit 16 bits with this slope/intercept")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    n = data.shape[2]
    names = np.random.default_rng(shuffle_seed).permutation(n) if shuffle_seed is not None else np.arange(n)
    paths = []
    for k in range(n):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^BUNET", "BUNET0001", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "20200101", "000000", "", ""
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, int(k + 1)
        ds.Modality, ds.Manufacturer, ds.SeriesDescription = "CT", "BUNET", Path(volume_path).name
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [f"{v:.8g}" for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [f"{v:.8g}" for v in lps[:3] @ np.array([0.0, 0.0, k, 1.0])]
        ds.PixelSpacing = [f"{dr:.8g}", f"{dc:.8g}"]
        ds.SliceThickness = f"{np.linalg.norm(lps[:3, 2]):.8g}"
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:.8g}", f"{intercept:.8g}", "HU"
        ds.PixelData = np.ascontiguousarray(stored[..., k].T.astype(np.uint16)).tobytes()
        p = out_dir / f"slice_{int(names[k]):04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bunet.dicom", description="Write a NIfTI CT volume as a DICOM series.")
    ap.add_argument("scan", help="NIfTI CT volume in HU")
    ap.add_argument("out_dir", help="folder for the series (one .dcm file a slice)")
    args = ap.parse_args(argv)
    try:
        paths = write_series(args.scan, args.out_dir)
    except (ScanError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} slices to {args.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
