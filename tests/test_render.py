"""Pixel data -> display image (imaging/render.py), on pydicom's test files and generated data sets.

No database: rendering is a pure function of a file or data set.
"""

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import set_pixel_data
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless, RLELossless, SecondaryCaptureImageStorage

from imaging import render
from imaging.render import CannotRender


def data_file(name: str) -> str:
    # download=False: a file missing from pydicom / pydicom-data fails here, instead
    # of the test hanging on a download.
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not in pydicom's or pydicom-data's test files"
    return path


def read(name: str) -> Dataset:
    return pydicom.dcmread(data_file(name), force=True)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int64)


def make_image(arr: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None, **attrs) -> Dataset:
    """A Secondary Capture data set holding `arr` (rows x columns [x samples], or frames first)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    set_pixel_data(ds, arr, photometric, bits_stored or arr.dtype.itemsize * 8)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def gradient(rows: int = 32, columns: int = 48, top: int = 4000) -> np.ndarray:
    return np.linspace(0, top, rows * columns).reshape(rows, columns).astype(np.uint16)


# Every transfer syntax and photometric interpretation we can decode.
# (file, mode, (width, height))
DECODABLE = [
    ("CT_small.dcm", "L", (128, 128)),  # explicit VR little endian, rescale
    ("MR_small.dcm", "L", (64, 64)),
    ("MR_small_implicit.dcm", "L", (64, 64)),
    ("MR_small_bigendian.dcm", "L", (64, 64)),
    ("MR_small_RLE.dcm", "L", (64, 64)),
    ("MR_small_jpeg_ls_lossless.dcm", "L", (64, 64)),
    ("MR_small_jp2klossless.dcm", "L", (64, 64)),
    ("JPEG2000.dcm", "L", (256, 1024)),  # JPEG 2000 lossy
    ("JPEG-LL.dcm", "L", (256, 1024)),  # JPEG lossless, first-order prediction
    ("JPGExtended.dcm", "L", (256, 1024)),  # JPEG extended, 12 bits
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "L", (1024, 768)),
    ("JPEGLSNearLossless_16.dcm", "L", (10, 50)),
    ("MR2_J2KI.dcm", "L", (1024, 1024)),
    ("image_dfl.dcm", "L", (512, 512)),  # deflated explicit VR little endian
    ("RG1_UNCI.dcm", "L", (1841, 1955)),  # MONOCHROME1
    ("RG3_J2KR.dcm", "L", (1760, 1760)),  # MONOCHROME1, JPEG 2000 lossless
    ("emri_small_big_endian.dcm", "L", (64, 64)),  # 10 frames
    ("emri_small_RLE.dcm", "L", (64, 64)),
    ("emri_small_jpeg_ls_lossless.dcm", "L", (64, 64)),
    ("emri_small_jpeg_2k_lossless.dcm", "L", (64, 64)),
    ("eCT_Supplemental.dcm", "L", (512, 512)),  # enhanced CT: window and rescale per frame
    ("liver.dcm", "L", (512, 512)),  # 1 bit allocated segmentation, 3 frames
    ("rtdose.dcm", "L", (10, 10)),  # 32 bits, 15 frames
    ("vlut_04.dcm", "L", (512, 512)),  # VOI LUT Sequence
    ("mlut_18.dcm", "L", (512, 512)),  # Modality LUT Sequence
    ("SC_rgb.dcm", "RGB", (100, 100)),
    ("SC_rgb_16bit.dcm", "RGB", (100, 100)),
    ("SC_rgb_32bit.dcm", "RGB", (100, 100)),
    ("SC_rgb_expb.dcm", "RGB", (100, 100)),
    ("SC_rgb_rle.dcm", "RGB", (100, 100)),
    ("SC_rgb_rle_16bit_2frame.dcm", "RGB", (100, 100)),
    ("SC_rgb_jpeg_dcmtk.dcm", "RGB", (100, 100)),  # JPEG baseline, YBR_FULL
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", "RGB", (100, 100)),  # JPEG baseline, YBR_FULL_422
    ("SC_rgb_jpeg_gdcm.dcm", "RGB", (100, 100)),  # JPEG lossless, RGB
    ("SC_rgb_jls_lossy_line.dcm", "RGB", (100, 100)),  # JPEG-LS near-lossless
    ("SC_rgb_gdcm_KY.dcm", "RGB", (100, 100)),  # JPEG 2000, RGB
    ("SC_ybr_full_uncompressed.dcm", "RGB", (100, 100)),
    ("SC_ybr_full_422_uncompressed.dcm", "RGB", (100, 100)),
    ("SC_rgb_dcmtk_ebcynp_dcmd.dcm", "RGB", (100, 100)),
    ("US1_J2KR.dcm", "RGB", (640, 480)),  # YBR_RCT
    ("US1_J2KI.dcm", "RGB", (640, 480)),  # YBR_ICT
    ("color-pl.dcm", "RGB", (256, 120)),  # planar configuration 1
    ("color3d_jpeg_baseline.dcm", "RGB", (640, 480)),  # 120-frame YBR_FULL_422 cine
    ("OT-PAL-8-face.dcm", "RGB", (640, 480)),  # PALETTE COLOR, no File Meta
    ("OBXXXX1A_rle_2frame.dcm", "RGB", (800, 600)),  # PALETTE COLOR, RLE, 2 frames
    ("OBXXXX1A_expb.dcm", "RGB", (800, 600)),  # PALETTE COLOR, big endian palette
    ("gdcm-US-ALOKA-16.dcm", "RGB", (640, 480)),  # segmented 16-bit palette
]


@pytest.mark.parametrize(("name", "mode", "size"), DECODABLE, ids=[row[0] for row in DECODABLE])
def test_it_renders_each_transfer_syntax_and_color_model(name, mode, size):
    image = render.render_frame(data_file(name))

    assert image.mode == mode
    assert image.size == size
    assert pixels(image).std() > 20, "the image is (nearly) blank"


@pytest.mark.parametrize("name", ["CT_small.dcm", "emri_small_RLE.dcm", "US1_J2KR.dcm", "OT-PAL-8-face.dcm"])
def test_it_renders_a_file_and_its_data_set_alike(name):
    from_file = render.render_frame(data_file(name))
    from_dataset = render.render_frame(read(name))

    assert np.array_equal(pixels(from_file), pixels(from_dataset))


@pytest.mark.parametrize(
    ("reference", "others"),
    [
        (
            "MR_small.dcm",
            [
                "MR_small_implicit.dcm",
                "MR_small_bigendian.dcm",
                "MR_small_RLE.dcm",
                "MR_small_jpeg_ls_lossless.dcm",
                "MR_small_jp2klossless.dcm",
            ],
        ),
        (
            "emri_small.dcm",
            [
                "emri_small_big_endian.dcm",
                "emri_small_RLE.dcm",
                "emri_small_jpeg_ls_lossless.dcm",
                "emri_small_jpeg_2k_lossless.dcm",
            ],
        ),
        ("RG1_UNCR.dcm", ["RG1_J2KR.dcm"]),
        ("MR2_UNCR.dcm", ["MR2_J2KR.dcm"]),
        ("US1_UNCR.dcm", ["US1_J2KR.dcm"]),
        ("SC_rgb.dcm", ["SC_rgb_16bit.dcm", "SC_rgb_32bit.dcm", "SC_rgb_expb.dcm", "SC_rgb_rle.dcm"]),
        ("OBXXXX1A.dcm", ["OBXXXX1A_expb.dcm", "OBXXXX1A_rle.dcm"]),
        ("gdcm-US-ALOKA-16.dcm", ["gdcm-US-ALOKA-16_big.dcm"]),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_it_renders_lossless_encodings_of_one_image_identically(reference, others):
    expected = pixels(render.render_frame(data_file(reference)))

    for name in others:
        assert np.array_equal(pixels(render.render_frame(data_file(name))), expected), name


@pytest.mark.parametrize(
    "name",
    [
        "SC_ybr_full_uncompressed.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_rgb_dcmtk_+eb+cy+np.dcm",
        "SC_rgb_dcmtk_ebcynp_dcmd.dcm",
        "SC_rgb_jls_lossy_line.dcm",
        "SC_rgb_gdcm_KY.dcm",
    ],
)
def test_it_shows_ycbcr_and_lossy_color_as_the_original_rgb(name):
    expected = pixels(render.render_frame(data_file("SC_rgb.dcm")))

    actual = pixels(render.render_frame(data_file(name)))

    # Lossy compression and 4:2:2 subsampling blur the edges of the color bars a little.
    assert np.abs(actual - expected).mean() < 4
    assert np.abs(actual[5, 50] - [255, 0, 0]).max() <= 8  # the top bar is red, not a YCbCr tint


def test_it_scales_16_bit_rgb_to_8_bits():
    ds = read("SC_rgb_16bit.dcm")

    rendered = pixels(render.render_frame(ds))

    assert ds.BitsStored == 16
    assert rendered[5, 50].tolist() == [255, 0, 0]
    assert rendered[15, 50].tolist() == [255, 128, 128]


def test_it_scales_rgb_by_its_bits_stored():
    arr = np.zeros((4, 4, 3), dtype=np.uint16)
    arr[..., 0], arr[..., 1] = 4095, 2048
    ds = make_image(arr, "RGB", bits_stored=12)

    assert pixels(render.render_frame(ds))[0, 0].tolist() == [255, 128, 0]


def test_it_converts_ycbcr_to_rgb_of_any_bit_depth():
    # pydicom converts YBR_FULL(_422) itself, so render's own conversion (for a decoder
    # that does not) is exercised directly.
    rgb = pydicom.dcmread(data_file("SC_rgb.dcm")).pixel_array.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    for bits in (8, 12, 16):
        scale, offset = (2**bits - 1) / 255, 2 ** (bits - 1)
        ybr = np.stack(  # PS3.3 C.7.6.3.1.2
            [
                0.299 * r + 0.587 * g + 0.114 * b,
                -0.168736 * r - 0.331264 * g + 0.5 * b,
                0.5 * r - 0.418688 * g - 0.081312 * b,
            ],
            axis=-1,
        ) * scale + [0, offset, offset]
        ybr = np.clip(np.rint(ybr), 0, 2**bits - 1).astype(np.uint16)

        converted = render._ybr_full_to_rgb(ybr, bits) / scale

        assert np.abs(converted - rgb).max() <= 2, bits


def test_it_shows_monochrome1_inverted():
    monochrome2 = read("MR_small.dcm")
    monochrome1 = copy.deepcopy(monochrome2)
    monochrome1.PhotometricInterpretation = "MONOCHROME1"

    normal = pixels(render.render_frame(monochrome2))
    inverted = pixels(render.render_frame(monochrome1))

    assert normal.std() > 20
    assert np.array_equal(inverted, 255 - normal)


def test_it_inverts_monochrome1_also_with_a_window_from_the_data():
    monochrome2 = make_image(gradient())
    monochrome1 = copy.deepcopy(monochrome2)
    monochrome1.PhotometricInterpretation = "MONOCHROME1"

    normal = pixels(render.render_frame(monochrome2))
    inverted = pixels(render.render_frame(monochrome1))

    assert normal[0, 0] == 0 and normal[-1, -1] == 255
    assert np.array_equal(inverted, 255 - normal)


def test_it_shows_the_lowest_values_of_a_monochrome1_radiograph_brightest():
    ds = read("RG1_UNCR.dcm")
    stored = ds.pixel_array.astype(np.float64)

    rendered = pixels(render.render_frame(ds))

    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert np.corrcoef(stored.ravel(), rendered.ravel())[0, 1] < -0.9


def test_it_shows_palette_color_through_the_palette():
    ds = read("OT-PAL-8-face.dcm")
    index = np.frombuffer(ds.PixelData, np.uint8).reshape(ds.Rows, ds.Columns)
    depth = ds.RedPaletteColorLookupTableDescriptor[2]
    luts = [
        np.frombuffer(ds[f"{color}PaletteColorLookupTableData"].value, f"<u{depth // 8}")
        for color in ("Red", "Green", "Blue")
    ]
    expected = np.stack([lut[index] for lut in luts], axis=-1).astype(np.float64)
    if depth == 16:
        expected = np.rint(expected * 255 / 65535)

    rendered = pixels(render.render_frame(ds))

    assert rendered.shape == (480, 640, 3)
    assert np.abs(rendered - expected).max() <= 1
    # Colorful: the channels differ (a palette read as grayscale would have R == G == B).
    assert np.abs(rendered[..., 0] - rendered[..., 2]).mean() > 10


def test_it_shows_the_middle_frame_of_a_multi_frame_image_by_default():
    frames = np.zeros((3, 30, 40), dtype=np.uint16)
    for k in range(3):
        frames[k, :, 10 * k : 10 * k + 10] = 1000  # a bright band, in another place in each frame
    ds = make_image(frames)

    default = pixels(render.render_frame(ds))
    each = [pixels(render.render_frame(ds, frame=k)) for k in range(3)]

    assert render.frame_count(ds) == 3
    assert np.array_equal(default, each[1])
    assert not np.array_equal(each[0], each[1]) and not np.array_equal(each[2], each[1])
    assert default[:, 10:20].min() == 255 and default[:, :10].max() == 0


@pytest.mark.parametrize("tsyntax", [None, RLELossless, JPEG2000Lossless], ids=["native", "rle", "j2k"])
def test_it_reads_the_middle_frame_of_a_multi_frame_file(tsyntax, tmp_path):
    frames = np.zeros((5, 64, 80), dtype=np.uint16)
    for k in range(5):
        frames[k, :, 16 * k : 16 * k + 16] = 1000
    ds = make_image(frames, bits_stored=12)
    if tsyntax is not None:
        ds.compress(tsyntax)
    path = save(ds, tmp_path / "cine.dcm")

    image = render.render_frame(path)
    thumbnail = render.thumbnail(path, 20)

    rendered = pixels(image)
    assert rendered[:, 32:48].min() == 255  # frame 2 of 0..4
    assert rendered[:, :32].max() == 0 and rendered[:, 48:].max() == 0
    assert thumbnail.size == (20, 16)


def test_it_decodes_only_the_frame_it_shows(tmp_path):
    frames = np.zeros((3, 30, 40), dtype=np.uint16)
    frames[1, :, 10:20] = 1000
    ds = make_image(frames, bits_stored=12)
    ds.compress(RLELossless)
    encoded = list(generate_frames(ds.PixelData, number_of_frames=3))
    # Frames 0 and 2 are not RLE at all: decoding the whole cine would fail.
    garbage = b"\xff" * 64
    ds.PixelData = encapsulate([garbage, encoded[1], garbage])
    path = save(ds, tmp_path / "cine.dcm")

    rendered = pixels(render.render_frame(path))

    assert rendered[:, 10:20].min() == 255
    with pytest.raises(CannotRender):
        render.render_frame(path, frame=0)


def test_it_uses_the_window_from_the_file():
    narrow = read("MR_small.dcm")
    narrow.WindowCenter, narrow.WindowWidth = 600, 200
    wide = read("MR_small.dcm")
    wide.WindowCenter, wide.WindowWidth = 600, 1200
    values = narrow.pixel_array

    narrow_image = pixels(render.render_frame(narrow))
    wide_image = pixels(render.render_frame(wide))

    assert not np.array_equal(narrow_image, wide_image)
    assert (narrow_image[values <= 499] == 0).all()
    assert (narrow_image[values > 700] == 255).all()
    inside = narrow_image[(values > 520) & (values < 680)]
    assert ((inside > 0) & (inside < 255)).all()


def test_it_uses_the_first_of_several_windows():
    several = read("MR_small.dcm")
    several.WindowCenter, several.WindowWidth = [600, 100], [200, 50]
    first = read("MR_small.dcm")
    first.WindowCenter, first.WindowWidth = 600, 200

    assert np.array_equal(pixels(render.render_frame(several)), pixels(render.render_frame(first)))


def test_a_window_passed_in_overrides_the_file():
    ds = read("MR_small.dcm")
    same = read("MR_small.dcm")
    same.WindowCenter, same.WindowWidth = 300, 400

    overridden = pixels(render.render_frame(ds, window=(300, 400)))

    assert not np.array_equal(overridden, pixels(render.render_frame(ds)))
    assert np.array_equal(overridden, pixels(render.render_frame(same)))


def test_it_windows_modality_values_not_stored_values():
    ct = read("CT_small.dcm")
    ct.WindowCenter, ct.WindowWidth = 40, 400  # Hounsfield units
    shifted = read("CT_small.dcm")
    shifted.RescaleIntercept = float(shifted.RescaleIntercept) + 1000
    shifted.WindowCenter, shifted.WindowWidth = 1040, 400

    original = pixels(render.render_frame(ct))

    assert original.std() > 20
    assert np.array_equal(pixels(render.render_frame(shifted)), original)


def test_it_applies_the_voi_lut_sequence():
    def with_voi_lut(descending: bool) -> Dataset:
        ds = make_image(gradient(top=4095), bits_stored=12)
        lut = np.arange(4096) // 16  # 4096 entries of 8 bits
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 8]
        item.LUTData = (255 - lut if descending else lut).tolist()
        ds.VOILUTSequence = Sequence([item])
        return ds

    ascending = pixels(render.render_frame(with_voi_lut(descending=False)))
    descending = pixels(render.render_frame(with_voi_lut(descending=True)))

    assert ascending[0, 0] == 0 and ascending[-1, -1] == 255
    assert np.array_equal(descending, 255 - ascending)


def test_it_applies_the_modality_lut_sequence():
    ds = make_image(gradient(top=4095), bits_stored=12)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = (4095 - np.arange(4096)).astype(np.uint16).tolist()  # a LUT that turns the image over
    item.ModalityLUTType = "US"
    ds.ModalityLUTSequence = Sequence([item])

    rendered = pixels(render.render_frame(ds))

    assert rendered[0, 0] == 255 and rendered[-1, -1] == 0


def test_it_windows_from_the_data_ignoring_a_few_hot_pixels():
    arr = gradient(rows=100, columns=100, top=1000)
    arr[0, :3] = 65535  # dead detector elements

    rendered = pixels(render.render_frame(make_image(arr, bits_stored=16)))

    # A min..max window would squeeze the gradient into the bottom 4 gray levels.
    assert rendered[50, 50] > 100
    assert rendered.std() > 60


def test_it_leaves_pixel_padding_out_of_the_window_from_the_data():
    arr = np.full((100, 100), -2000, dtype=np.int16)
    arr[:, :50] = gradient(rows=100, columns=50, top=1000)
    padded = make_image(arr, bits_stored=16, PixelPaddingValue=-2000)
    unpadded = make_image(arr, bits_stored=16)

    with_padding = pixels(render.render_frame(padded))
    without = pixels(render.render_frame(unpadded))

    assert with_padding[:, :50].max() == 255 and with_padding[:, :50].min() == 0
    assert without[:, :50].min() > 150  # the gradient squeezed into the top of the range


def test_it_uses_the_window_of_the_frame_in_enhanced_multi_frame_images():
    frames = np.stack([gradient(), gradient()])
    ds = make_image(frames, bits_stored=16)
    shared = Dataset()
    transformation = Dataset()
    transformation.RescaleSlope, transformation.RescaleIntercept, transformation.RescaleType = 1, -1000, "HU"
    shared.PixelValueTransformationSequence = Sequence([transformation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for center, width in ((0, 500), (1000, 3000)):
        group, voi = Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        group.FrameVOILUTSequence = Sequence([voi])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    plain = make_image(gradient(), bits_stored=16, RescaleSlope=1, RescaleIntercept=-1000)
    plain.WindowCenter, plain.WindowWidth = 0, 500

    first = pixels(render.render_frame(ds, frame=0))
    second = pixels(render.render_frame(ds, frame=1))

    assert np.array_equal(first, pixels(render.render_frame(plain)))
    assert not np.array_equal(first, second)


def test_a_thumbnail_fits_within_the_size_keeping_the_aspect_ratio():
    tall = render.thumbnail(Path(data_file("JPEG-LL.dcm")), 128)  # 256 x 1024
    radiograph = render.thumbnail(Path(data_file("RG1_UNCR.dcm")), 100)  # 1841 x 1955

    assert tall.size == (32, 128)
    assert radiograph.height == 100 and radiograph.width == round(100 * 1841 / 1955)
    assert pixels(radiograph).std() > 20


def test_a_thumbnail_never_enlarges_a_small_image():
    thumbnail = render.thumbnail(Path(data_file("MR_small.dcm")), 256)

    assert thumbnail.size == (64, 64)
    assert thumbnail.mode == "L"


def test_a_thumbnail_corrects_the_aspect_of_non_square_pixels(tmp_path):
    aspect_ratio = render.thumbnail(Path(data_file("color-px.dcm")), 256)  # 256 x 120, Pixel Aspect Ratio 4:3
    spacing = save(make_image(gradient(rows=64, columns=64), PixelSpacing=[1.0, 0.5]), tmp_path / "spacing.dcm")

    assert aspect_ratio.size == (256, 160)
    assert aspect_ratio.mode == "RGB"
    assert render.thumbnail(spacing, 256).size == (64, 128)
    assert render.thumbnail(spacing, 32).size == (16, 32)


def test_render_frame_keeps_the_stored_size_of_non_square_pixels():
    assert render.render_frame(data_file("color-px.dcm")).size == (256, 120)


def test_frame_count():
    assert render.frame_count(Dataset()) == 1
    assert render.frame_count(read("emri_small.dcm")) == 10
    empty = Dataset()
    empty.NumberOfFrames = None
    assert render.frame_count(empty) == 1


def test_it_raises_cannot_render_without_pixel_data(tmp_path):
    ds = make_image(gradient())
    del ds.PixelData
    path = save(ds, tmp_path / "no-pixels.dcm")

    with pytest.raises(CannotRender, match="no pixel data"):
        render.render_frame(ds)
    with pytest.raises(CannotRender, match="no pixel data"):
        render.thumbnail(path, 64)
    with pytest.raises(CannotRender):
        render.thumbnail(Path(data_file("rtplan.dcm")), 64)
    assert issubclass(CannotRender, ValueError)


def test_it_raises_cannot_render_for_an_unsupported_photometric_interpretation():
    ds = read("SC_rgb.dcm")
    ds.PhotometricInterpretation = "HSV"

    with pytest.raises(CannotRender, match="HSV"):
        render.render_frame(ds)


def test_it_raises_cannot_render_for_undecodable_pixel_data(tmp_path):
    ds = make_image(gradient())
    ds.compress(JPEG2000Lossless)
    ds.PixelData = encapsulate([b"\x00" * 200])
    path = save(ds, tmp_path / "corrupt.dcm")

    with pytest.raises(CannotRender):
        render.render_frame(path)
    with pytest.raises(CannotRender):
        render.render_frame(data_file("MR_truncated.dcm"))


def test_it_raises_cannot_render_for_a_frame_that_does_not_exist():
    with pytest.raises(CannotRender, match="frame 10"):
        render.render_frame(data_file("emri_small.dcm"), frame=10)
