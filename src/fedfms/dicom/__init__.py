"""DICOM in and out: series found in a folder of any layout and read into a volume
(:mod:`~fedfms.dicom.series`), their DICOM SEG / RTSTRUCT labels (:mod:`~fedfms.dicom.labels`),
masks written back as DICOM SEG (:mod:`~fedfms.dicom.seg`), a PACS over DICOMweb
(:mod:`~fedfms.dicom.web`) and keyed case ids that keep patient identity at the site
(:mod:`~fedfms.dicom.identity`). Parsing, decoding and encoding are pydicom's and highdicom's."""
