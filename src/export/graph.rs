//! A small builder of ONNX graphs: nodes, attributes, float initializers and typed inputs and
//! outputs, on the message types generated from `proto/onnx.proto`.
use tch::{Device, Kind, Tensor};

use super::onnx_proto::attribute_proto::AttributeType;
use super::onnx_proto::tensor_proto::DataType;
use super::onnx_proto::tensor_shape_proto::{dimension, Dimension};
use super::onnx_proto::{
    type_proto, AttributeProto, GraphProto, NodeProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use super::ExportError;

/// One dimension of a graph input or output: fixed, or a named (dynamic) axis.
#[derive(Debug, Clone)]
pub(crate) enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A dynamic axis with this name.
    Named(&'static str),
}

/// The nodes and initializers of a graph, in topological order.
#[derive(Debug, Default)]
pub(crate) struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// Bytes of initializer data so far.
    pub(crate) data_bytes: usize,
}

impl GraphBuilder {
    /// Adds `tensor` as the float32 initializer `name` (converted to float32 on the CPU);
    /// returns its name.
    pub(crate) fn constant(&mut self, name: &str, tensor: &Tensor) -> Result<String, ExportError> {
        let torch = |source| ExportError::Torch {
            name: name.into(),
            source,
        };
        let t = (tensor.f_detach().and_then(|t| t.f_to_device(Device::Cpu)))
            .and_then(|t| t.f_to_kind(Kind::Float))
            .and_then(|t| t.f_contiguous())
            .map_err(torch)?;
        let values = Vec::<f32>::try_from(&t.f_reshape([-1]).map_err(torch)?).map_err(torch)?;
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.data_bytes += raw.len();
        self.initializers.push(TensorProto {
            dims: t.size(),
            data_type: Some(DataType::Float as i32),
            name: Some(name.into()),
            raw_data: Some(raw),
            ..Default::default()
        });
        Ok(name.into())
    }

    /// Adds the node `op_type` named `name` reading `inputs`, with `attributes`; its single
    /// output is also called `name`, which is returned.
    pub(crate) fn node(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.into()],
            name: Some(name.into()),
            op_type: Some(op_type.into()),
            attribute: attributes,
            ..Default::default()
        });
        name.into()
    }

    /// The graph `name` with one float input and one float output of the given shapes; the
    /// output is the node output `output`.
    pub(crate) fn finish(
        self,
        name: &str,
        input: (&str, &[Dim]),
        output: (&str, &[Dim]),
    ) -> GraphProto {
        GraphProto {
            node: self.nodes,
            name: Some(name.into()),
            initializer: self.initializers,
            input: vec![float_value(input.0, input.1)],
            output: vec![float_value(output.0, output.1)],
            ..Default::default()
        }
    }
}

/// A float32 tensor value `name` of shape `dims`.
fn float_value(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n),
                Dim::Named(s) => dimension::Value::DimParam((*s).into()),
            }),
            ..Default::default()
        })
        .collect();
    let tensor = type_proto::Tensor {
        elem_type: Some(DataType::Float as i32),
        shape: Some(TensorShapeProto { dim }),
    };
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(tensor)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The integer-list attribute `name`.
pub(crate) fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: values.to_vec(),
        ..Default::default()
    }
}

/// The integer attribute `name`.
pub(crate) fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

/// The float attribute `name`.
pub(crate) fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(value),
        ..Default::default()
    }
}
