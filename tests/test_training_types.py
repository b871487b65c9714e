"""Tests for the public training data types: SDK 0.38 names and defaults, validation with UsageError."""

import json
import pathlib
import struct
import subprocess
import sys

import attrs
import pytest

import tinkex_persist as tp
from tinkex_persist import _converter, _wire, types
from tinkex_persist.exceptions import UsageError

GOLDEN = pathlib.Path(__file__).parent / "golden"


class TestModelInput:
    """Tests for ``ModelInput`` and its chunks."""

    def test_from_ints_makes_one_token_chunk(self):
        """``from_ints`` gives one ``EncodedTextChunk``; ``to_ints`` and ``length`` read it back."""
        mi = tp.ModelInput.from_ints([101, 2023, 2003])
        assert [tp.EncodedTextChunk(tokens=[101, 2023, 2003])] == mi.chunks
        assert ([101, 2023, 2003], 3, "encoded_text") == (mi.to_ints(), mi.length, mi.chunks[0].type)

    def test_append_and_empty(self):
        """``empty``, ``append_int`` and ``append`` build new inputs and leave the original alone."""
        mi = tp.ModelInput.empty()
        longer = mi.append_int(5).append(tp.EncodedTextChunk(tokens=[6, 7]))
        assert ([], [5, 6, 7]) == (mi.chunks, longer.to_ints())

    @pytest.mark.parametrize("token", ["7", 1.5, None, True, [1]])
    def test_a_non_int_token_is_refused(self, token):
        """A token that is not an int is a UsageError naming its position."""
        with pytest.raises(UsageError) as info:
            tp.ModelInput.from_ints([1, 2, token])
        assert "tokens[2]" in str(info.value)

    @pytest.mark.parametrize("token", [2**31, -(2**31) - 1])
    def test_a_token_outside_int32_is_refused(self, token):
        """Tokens travel as int32: a larger id is refused."""
        with pytest.raises(UsageError) as info:
            tp.ModelInput.from_ints([token])
        assert "32 bits" in str(info.value)

    def test_tokens_must_be_a_list(self):
        """A bare int or a string is not a token list."""
        for bad in (5, "abc"):
            with pytest.raises(UsageError):
                tp.ModelInput.from_ints(bad)

    def test_chunks_must_be_chunks(self):
        """A ModelInput of anything but chunks is refused."""
        with pytest.raises(UsageError):
            tp.ModelInput(chunks=[[1, 2]])
        with pytest.raises(UsageError):
            tp.ModelInput(chunks="abc")

    def test_image_chunks(self):
        """An image counts ``expected_tokens`` positions; without it the length is unknown and ``to_ints`` refuses."""
        image = tp.ImageChunk(data=b"\x89PNG", format="png", expected_tokens=4)
        mi = tp.ModelInput(chunks=[tp.EncodedTextChunk(tokens=[1]), image])
        assert 5 == mi.length
        with pytest.raises(UsageError):
            mi.to_ints()
        with pytest.raises(UsageError):
            tp.ImageChunk(data=b"x", format="png").length
        assert "<4 bytes>" in repr(image)

    @pytest.mark.parametrize(
        "kwargs", [{"data": "x", "format": "png"}, {"data": b"x", "format": "gif"}, {"data": b"x", "format": "png", "expected_tokens": "3"}]
    )
    def test_bad_images_are_refused(self, kwargs):
        """Image data must be bytes, the format png or jpeg, ``expected_tokens`` an int."""
        with pytest.raises(UsageError):
            tp.ImageChunk(**kwargs)

    def test_types_are_frozen(self):
        """Assigning to a field of a frozen type raises."""
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            tp.ModelInput.from_ints([1]).chunks = []


class TestTensorData:
    """Tests for ``TensorData``."""

    def test_flat_list(self):
        """A flat list keeps its values; without a shape, ``shape`` stays None like the SDK's."""
        td = tp.TensorData(data=[1, 2, 3], dtype="int64")
        assert ([1, 2, 3], None, [1, 2, 3], 3, 24) == (td.data, td.shape, td.tolist(), len(td), td.nbytes)

    def test_no_data_is_an_empty_tensor(self):
        """``TensorData(dtype=...)`` without data is empty, like the SDK's."""
        assert ([], 0) == (tp.TensorData(dtype="float32").data, len(tp.TensorData(dtype="int64")))

    @pytest.mark.parametrize(
        "dtype,expected", [("torch.float32", "float32"), ("torch.int64", "int64"), ("torch.bool", None)]
    )
    def test_other_array_libraries_by_their_dtype_names(self, dtype, expected):
        """An array object that is not numpy (torch-style ``dtype`` without ``kind``) is read by its dtype."""

        class TorchStyleDtype:
            is_floating_point = dtype == "torch.float32"

            def __str__(self):
                return dtype

        class TorchStyleArray:
            shape = (2,)
            dtype = TorchStyleDtype()

            def tolist(self):
                return [1, 0]

        if expected is None:
            with pytest.raises(UsageError):
                tp.TensorData.from_numpy(TorchStyleArray())
        else:
            assert tp.TensorData(data=[1, 0], dtype=expected, shape=[2]) == tp.TensorData.from_numpy(TorchStyleArray())

    def test_tobytes_is_little_endian_in_the_dtype(self):
        """``tobytes`` gives the wire payload: 8 bytes per int64, 4 per float32, little-endian."""
        assert struct.pack("<2q", 1, -2) == tp.TensorData(data=[1, -2], dtype="int64").tobytes()
        assert struct.pack("<2f", 0.5, 1.0) == tp.TensorData(data=[0.5, 1], dtype="float32").tobytes()

    def test_float32_rounds_like_the_sdk(self):
        """float32 values are stored at float32 precision, as numpy does for the SDK."""
        assert [0.10000000149011612, 1.0] == tp.TensorData(data=[0.1, 1], dtype="float32").data

    def test_nested_lists_give_the_shape(self):
        """A nested list infers its shape and ``tolist`` nests back."""
        td = tp.TensorData(data=[[1, 2, 3], [4, 5, 6]], dtype="int64")
        assert ([2, 3], [1, 2, 3, 4, 5, 6], [[1, 2, 3], [4, 5, 6]]) == (td.shape, td.data, td.tolist())
        assert [[[1], [2]]] == tp.TensorData(data=[1, 2], dtype="int64", shape=[1, 2, 1]).tolist()

    @pytest.mark.parametrize(
        "kwargs,needle",
        [
            ({"data": [1.5], "dtype": "int64"}, "does not fit dtype 'int64'"),
            ({"data": ["a"], "dtype": "float32"}, "does not fit dtype 'float32'"),
            ({"data": [2**63], "dtype": "int64"}, "out of range"),
            ({"data": [1], "dtype": "float64"}, "dtype must be"),
            ({"data": [1], "dtype": None}, "dtype must be"),
            ({"data": [[1, 2], [3]], "dtype": "int64"}, "ragged"),
            ({"data": [[1, 2], 3], "dtype": "int64"}, "ragged"),
            ({"data": [1, [2]], "dtype": "int64"}, "ragged"),
            ({"data": [1, 2, 3], "dtype": "int64", "shape": [2]}, "needs 2 values, got 3"),
            ({"data": [], "dtype": "int64", "shape": [-1]}, "negative"),
            ({"data": [1], "dtype": "int64", "shape": ["1"]}, "shape"),
            ({"data": 5, "dtype": "int64"}, "must be a list"),
            ({"data": [1], "dtype": "int64", "shape": [1, 1], "sparse_crow_indices": [0, 1]}, "together"),
            ({"data": [1], "dtype": "int64", "sparse_crow_indices": [0, 1], "sparse_col_indices": [0]}, "2-D shape"),
            ({"data": [1], "dtype": "int64", "shape": [1, 1], "sparse_crow_indices": [0, 1, 1], "sparse_col_indices": [0]},
             "do not fit"),
        ],
    )
    def test_bad_tensors_are_refused(self, kwargs, needle):
        """A wrong dtype, a value of the wrong type, a ragged list or a shape mismatch is a UsageError."""
        with pytest.raises(UsageError) as info:
            tp.TensorData(**kwargs)
        assert needle in str(info.value)

    def test_sparse_tensor_densifies(self):
        """A CSR tensor lists only its values; ``tolist`` fills the rest with ``pad_value``."""
        td = tp.TensorData(data=[5, 6], dtype="int64", shape=[2, 3], sparse_crow_indices=[0, 1, 2], sparse_col_indices=[2, 0])
        assert [[-1, -1, 5], [6, -1, -1]] == td.tolist(pad_value=-1)
        assert "sparse" in repr(td)

    def test_equality_and_repr(self):
        """Tensors compare by dtype, shape and values; a long repr is abbreviated; tensors are unhashable like lists."""
        a = tp.TensorData(data=list(range(20)), dtype="int64")
        assert a == tp.TensorData(data=list(range(20)), dtype="int64")
        assert a != tp.TensorData(data=list(range(20)), dtype="int64", shape=[20])
        assert a != [0, 1]
        assert "(20 values)" in repr(a)
        with pytest.raises(TypeError):
            hash(a)


class TestNumpy:
    """Tests for numpy arrays (accepted when numpy is installed; it is in the test extra through tinker)."""

    np = pytest.importorskip("numpy")

    def test_arrays_become_tensor_data(self):
        """Arrays keep their shape; integer arrays are int64 and float arrays float32."""
        np = self.np
        td = tp.TensorData.from_numpy(np.arange(6, dtype=np.int32).reshape(2, 3))
        assert ("int64", [2, 3], [0, 1, 2, 3, 4, 5]) == (td.dtype, td.shape, td.data)
        assert ("float32", [2]) == (tp.TensorData.from_numpy(np.ones(2)).dtype, tp.TensorData.from_numpy(np.ones(2)).shape)
        back = td.to_numpy()
        assert (np.dtype(np.int64), (2, 3)) == (back.dtype, back.shape)

    def test_datum_accepts_arrays_and_tokens(self):
        """A Datum from numpy arrays equals the one from lists."""
        np = self.np
        from_arrays = tp.Datum(
            tp.ModelInput.from_ints(np.array([1, 2, 3])),
            {"target_tokens": np.array([2, 3, 4]), "weights": np.array([0.0, 1.0, 1.0])},
        )
        from_lists = tp.Datum(tp.ModelInput.from_ints([1, 2, 3]), {"target_tokens": [2, 3, 4], "weights": [0.0, 1.0, 1.0]})
        assert from_lists == from_arrays

    def test_wrong_array_dtypes_are_refused(self):
        """A float array for target_tokens, a bool array, or from_numpy of a non-array is a UsageError."""
        np = self.np
        with pytest.raises(UsageError):
            tp.Datum(tp.ModelInput.from_ints([1]), {"target_tokens": np.array([1.5])})
        with pytest.raises(UsageError):
            tp.Datum(tp.ModelInput.from_ints([1]), {"weights": np.array([True])})
        with pytest.raises(UsageError):
            tp.TensorData(data=np.array([1.5]), dtype="int64")
        with pytest.raises(UsageError):
            tp.TensorData.from_numpy([1, 2])

    def test_importing_the_package_does_not_import_numpy(self):
        """numpy is never imported at module level."""
        code = "import sys, tinkex_persist, tinkex_persist._proto; print('numpy' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        assert "False" == out


class TestDatum:
    """Tests for ``Datum``."""

    def test_plain_lists_get_the_sdk_dtypes(self):
        """target_tokens become int64, weights float32, each with a 1-D shape, as the SDK converts them."""
        d = tp.Datum(tp.ModelInput.from_ints([1, 2]), {"target_tokens": [2, 3], "weights": [1, 0]})
        assert {"target_tokens": tp.TensorData(data=[2, 3], dtype="int64", shape=[2]),
                "weights": tp.TensorData(data=[1.0, 0.0], dtype="float32", shape=[2])} == d.loss_fn_inputs

    def test_loss_fn_inputs_default_to_empty(self):
        """``loss_fn_inputs`` defaults to an empty dict, and None means the same."""
        assert {} == tp.Datum(model_input=tp.ModelInput.from_ints([1])).loss_fn_inputs
        assert {} == tp.Datum(tp.ModelInput.from_ints([1]), None).loss_fn_inputs

    @pytest.mark.parametrize("key", ["target_tokens", "weights", "logprobs", "advantages"])
    def test_mismatched_lengths_are_refused(self, key):
        """A per-token input longer or shorter than the model input is a UsageError naming it."""
        with pytest.raises(UsageError) as info:
            tp.Datum(tp.ModelInput.from_ints([1, 2, 3]), {key: [1, 2]})
        assert "loss_fn_inputs[%r] has 2 entries but the model input has 3 tokens" % key in str(info.value)

    def test_an_image_without_expected_tokens_skips_the_length_check(self):
        """When the input length is unknown, the server decides; construction succeeds."""
        mi = tp.ModelInput(chunks=[tp.ImageChunk(data=b"x", format="png")])
        assert 2 == len(tp.Datum(mi, {"target_tokens": [1, 2]}).loss_fn_inputs["target_tokens"])

    @pytest.mark.parametrize(
        "model_input,inputs,needle",
        [
            ([1, 2], {}, "must be a ModelInput"),
            (None, {"target_tokens": [1.5]}, "loss_fn_inputs['target_tokens']: value[0] is float"),
            (None, {"mask": [1]}, "cannot tell the dtype"),
            (None, {"target_tokens": "1"}, "must be a TensorData, a list or an array"),
            (None, {1: [1]}, "keys must be strings"),
            (None, [("target_tokens", [1])], "must be a dict"),
        ],
    )
    def test_bad_datums_are_refused(self, model_input, inputs, needle):
        """A non-ModelInput, a float token target, an unknown key as a plain list, or a non-dict is a UsageError."""
        with pytest.raises(UsageError) as info:
            tp.Datum(model_input if model_input is not None else tp.ModelInput.from_ints([1]), inputs)
        assert needle in str(info.value)

    def test_explicit_tensor_data_for_any_key(self):
        """Any key is accepted when its value is a TensorData."""
        td = tp.TensorData(data=[1.0], dtype="float32")
        assert {"mask": td} == tp.Datum(tp.ModelInput.from_ints([1]), {"mask": td}).loss_fn_inputs


class TestAdamParams:
    """Tests for ``AdamParams``."""

    def test_defaults_match_the_sdk(self):
        """Every default equals tinker 0.38's ``AdamParams``."""
        sdk_types = pytest.importorskip("tinker.types")
        assert sdk_types.AdamParams().model_dump() == attrs.asdict(tp.AdamParams())

    def test_the_optim_step_body_stays_byte_equal(self):
        """Mapped onto the wire class, the public params encode to the SDK's captured optim_step body."""
        vector = json.loads((GOLDEN / "requests" / "OptimStepRequest-accept-optim_step.json").read_text())["body"]
        request = _wire.OptimStepRequest(
            model_id=vector["model_id"], seq_id=vector["seq_id"], adam_params=_wire.AdamParams(**attrs.asdict(tp.AdamParams()))
        )
        assert json.dumps(vector, separators=(",", ":")).encode() == _converter.dumps(request)

    def test_ints_become_floats(self):
        """An int hyper-parameter is stored as a float, so it encodes as ``0.0`` like the SDK."""
        assert (1.0, float) == (tp.AdamParams(learning_rate=1).learning_rate, type(tp.AdamParams(weight_decay=0).weight_decay))

    @pytest.mark.parametrize(
        "kwargs,needle",
        [
            ({"learning_rate": -1e-4}, "learning_rate"),
            ({"learning_rate": float("nan")}, "learning_rate"),
            ({"learning_rate": "1e-4"}, "must be a number"),
            ({"beta1": 1.0}, "beta1"),
            ({"beta2": -0.1}, "beta2"),
            ({"eps": -1.0}, "eps"),
            ({"weight_decay": True}, "must be a number"),
            ({"grad_clip_norm": -1.0}, "grad_clip_norm"),
        ],
    )
    def test_bad_values_are_refused(self, kwargs, needle):
        """A negative learning rate, a beta of 1, NaN or a non-number is a UsageError naming the field."""
        with pytest.raises(UsageError) as info:
            tp.AdamParams(**kwargs)
        assert needle in str(info.value)


class TestResults:
    """Tests for the result types."""

    def test_forward_backward_output(self):
        """Metrics default to empty and read by name; outputs are per-datum dicts."""
        out = tp.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=[])
        assert {} == out.metrics
        out = tp.ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord",
            loss_fn_outputs=[{"logprobs": tp.TensorData(data=[-1.0], dtype="float32")}],
            metrics={"loss:sum": 1.0},
        )
        assert (1.0, [-1.0]) == (out.metrics["loss:sum"], out.loss_fn_outputs[0]["logprobs"].data)

    def test_optim_step_response(self):
        """``metrics`` is optional."""
        assert (None, {"lr:mean": 1.0}) == (tp.OptimStepResponse().metrics, tp.OptimStepResponse(metrics={"lr:mean": 1.0}).metrics)

    def test_types_module_offers_them_as_tinker_types_does(self):
        """``tinkex_persist.types`` re-exports the training types."""
        assert (tp.Datum, tp.TensorData, tp.AdamParams) == (types.Datum, types.TensorData, types.AdamParams)
