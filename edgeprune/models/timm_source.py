"""`timm:NAME`: a model from timm's own create_model, random init (pretrained=False: nothing is downloaded at run
time; --weights loads the user's). Its input shape is the one its pretrained_cfg names unless --input-shape says
otherwise; a model whose position embeddings fix the image size (ViT-style) is built for the size asked for."""
from __future__ import annotations

from ..errors import ModelLoadError, first_line


def load_timm(name: str, input_shape, num_classes):
    from . import LoadedModel, close_names, shape_from_module

    try:
        import timm
    except ImportError:
        raise ModelLoadError("timm is not installed: pip install edgeprune[timm] (or pip install timm)") from None
    except Exception as exc:  # an incompatible timm/torch pair fails at import
        raise ModelLoadError(f"timm cannot be imported ({first_line(exc)}): reinstall with ./run.sh's constraints") from None
    if not name or not timm.is_model(name):
        raise ModelLoadError(f"unknown timm model {name!r}{close_names(name, timm.list_models())}: "
                             "see timm.list_models() for names")
    kwargs = {"pretrained": False}
    if num_classes:
        kwargs["num_classes"] = num_classes
    if input_shape and input_shape[0] != 3:
        kwargs["in_chans"] = int(input_shape[0])
    module = _create(timm, name, kwargs, input_shape)
    default = shape_from_module(module)
    if input_shape and default and tuple(input_shape[1:]) != default[1:]:
        try:  # models whose position embeddings fix the size take img_size; the others refuse it
            module = timm.create_model(name, img_size=tuple(int(s) for s in input_shape[1:]), **kwargs)
        except TypeError:
            pass
        except Exception as exc:
            raise ModelLoadError(f"timm:{name} cannot be built for input shape {list(input_shape)}: "
                                 f"{first_line(exc)}; check --input-shape") from None
    shape = tuple(int(s) for s in input_shape) if input_shape else default
    if shape is None:
        raise ModelLoadError(f"timm:{name} does not say its input size: give --input-shape C,H,W")
    return LoadedModel(module, f"timm:{name}", "timm", shape, num_classes, pretrained=False, spec=f"timm:{name}")


def _create(timm, name: str, kwargs: dict, input_shape):
    try:
        return timm.create_model(name, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"timm:{name} cannot be built ({type(exc).__name__}: {first_line(exc)})"
                             + ("; check --input-shape" if input_shape else "")) from None
