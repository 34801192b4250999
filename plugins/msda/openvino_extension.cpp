// OpenVINO extension: multi-scale deformable attention as one op, m2f::MSDeformAttn, computed by msda_cpu.hpp.
//
// Loaded with Core.add_extension(path). It registers the op (opset "m2f_msda_v<ABI>") and the ONNX frontend's
// mapping of a node MSDeformAttn in the domain "m2f" to it, so an artifact exported with the fused node reads
// straight into it. Inputs in the order of the TensorRT plugin: value (N, S, M, D) f32/bf16, spatial_shapes
// (L, 2) i32/i64, level_start_index (L) i32/i64 (checked, not read: the offsets are the prefix sums of H * W),
// sampling_locations (N, Lq, M, L, P, 2) and attention_weights (N, Lq, M, L, P) in f32 or bf16. Output
// (N, Lq, M * D) in the value's type. Work is split over N * Lq * M with ov::parallel_nt: the threads of the
// runtime that calls evaluate (the CPU plugin's own TBB arena), none of its own.
#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/core/parallel.hpp>
#include <openvino/frontend/onnx/extension/op.hpp>
#include <openvino/op/op.hpp>

#include <string>
#include <vector>

#include "msda_cpu.hpp"

#define M2F_STRINGIFY_(x) #x
#define M2F_STRINGIFY(x) M2F_STRINGIFY_(x)

namespace m2f {

class MSDeformAttn : public ov::op::Op {
public:
    OPENVINO_OP("MSDeformAttn", "m2f_msda_v" M2F_STRINGIFY(M2F_MSDA_ABI));

    MSDeformAttn() = default;
    explicit MSDeformAttn(const ov::OutputVector& args) : Op(args) { constructor_validate_and_infer_types(); }

    void validate_and_infer_types() override {
        NODE_VALIDATION_CHECK(this, get_input_size() == 5,
                              "MSDeformAttn takes value, spatial_shapes, level_start_index, sampling_locations, "
                              "attention_weights; got ", get_input_size(), " inputs");
        const auto value_type = get_input_element_type(0);
        NODE_VALIDATION_CHECK(this, value_type.is_dynamic() || value_type == ov::element::f32 ||
                                        value_type == ov::element::bf16,
                              "value must be f32 or bf16, got ", value_type);
        const auto& value = get_input_partial_shape(0);
        const auto& locations = get_input_partial_shape(3);
        NODE_VALIDATION_CHECK(this, value.rank().compatible(4), "value must be (N, S, M, D), got ", value);
        NODE_VALIDATION_CHECK(this, locations.rank().compatible(6),
                              "sampling_locations must be (N, Lq, M, L, P, 2), got ", locations);
        ov::PartialShape out = ov::PartialShape::dynamic(3);
        if (value.rank().is_static() && locations.rank().is_static()) {
            out = ov::PartialShape{value[0], locations[1], value[2] * value[3]};
        }
        set_output_type(0, value_type, out);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& new_args) const override {
        return std::make_shared<MSDeformAttn>(new_args);
    }

    bool visit_attributes(ov::AttributeVisitor&) override { return true; }

    bool has_evaluate() const override { return true; }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const auto& value = inputs[0];
        const auto& locations = inputs[3];
        const auto& weights = inputs[4];
        const auto vs = value.get_shape();
        const auto ls = locations.get_shape();
        OPENVINO_ASSERT(vs.size() == 4 && ls.size() == 6 && ls[5] == 2, "MSDeformAttn: bad input ranks");
        msda::Shape s{static_cast<int64_t>(vs[0]), static_cast<int64_t>(vs[1]), static_cast<int64_t>(vs[2]),
                      static_cast<int64_t>(vs[3]), static_cast<int64_t>(ls[1]), static_cast<int64_t>(ls[3]),
                      static_cast<int64_t>(ls[4])};
        OPENVINO_ASSERT(static_cast<int64_t>(ls[0]) == s.N && static_cast<int64_t>(ls[2]) == s.M,
                        "MSDeformAttn: sampling_locations ", ls, " do not match value ", vs);
        OPENVINO_ASSERT(weights.get_shape() == ov::Shape(ls.begin(), ls.end() - 1),
                        "MSDeformAttn: attention_weights ", weights.get_shape(), " do not match locations ", ls);
        OPENVINO_ASSERT(locations.get_element_type() == weights.get_element_type(),
                        "MSDeformAttn: sampling_locations and attention_weights differ in type");
        const auto hw = as_int64(inputs[1]);
        OPENVINO_ASSERT(static_cast<int64_t>(hw.size()) == 2 * s.L, "MSDeformAttn: spatial_shapes must be (L, 2)");
        OPENVINO_ASSERT(static_cast<int64_t>(inputs[2].get_size()) == s.L,
                        "MSDeformAttn: level_start_index must have L entries");
        std::vector<int64_t> start(static_cast<size_t>(s.L));
        int64_t total = 0;
        for (int64_t l = 0; l < s.L; ++l) {
            OPENVINO_ASSERT(hw[2 * l] > 0 && hw[2 * l + 1] > 0, "MSDeformAttn: a level has no positions");
            start[static_cast<size_t>(l)] = total;
            total += hw[2 * l] * hw[2 * l + 1];
        }
        OPENVINO_ASSERT(total == s.S, "MSDeformAttn: spatial shapes cover ", total, " positions, value has ", s.S);
        outputs[0].set_shape(ov::Shape{vs[0], ls[1], vs[2] * vs[3]});

        const auto value_type = value.get_element_type(), location_type = locations.get_element_type();
        OPENVINO_ASSERT(value_type == ov::element::bf16 || value_type == ov::element::f32, "MSDeformAttn: value type");
        OPENVINO_ASSERT(location_type == ov::element::bf16 || location_type == ov::element::f32,
                        "MSDeformAttn: location type");
        run(inputs, outputs[0], hw, start, s);
        return true;
    }

private:
    static std::vector<int64_t> as_int64(const ov::Tensor& t) {
        std::vector<int64_t> out(t.get_size());
        if (t.get_element_type() == ov::element::i32) {
            const auto* src = t.data<const int32_t>();
            for (size_t i = 0; i < out.size(); ++i) out[i] = src[i];
        } else {
            OPENVINO_ASSERT(t.get_element_type() == ov::element::i64, "MSDeformAttn: shapes must be i32 or i64");
            const auto* src = t.data<const int64_t>();
            for (size_t i = 0; i < out.size(); ++i) out[i] = src[i];
        }
        return out;
    }

    void run(const ov::TensorVector& inputs, ov::Tensor& output, const std::vector<int64_t>& hw,
             const std::vector<int64_t>& start, const msda::Shape& s) const {
        const msda::Call call{inputs[0].data(), hw.data(), start.data(), inputs[3].data(), inputs[4].data(),
                              output.data(), s, inputs[0].get_element_type() == ov::element::bf16,
                              inputs[3].get_element_type() == ov::element::bf16};
        const size_t work = static_cast<size_t>(s.N * s.Lq * s.M);
        ov::parallel_nt(0, [&](const int ithr, const int nthr) {
            size_t begin = 0, end = 0;
            ov::splitter(work, nthr, ithr, begin, end);
            kernel(call, static_cast<int64_t>(begin), static_cast<int64_t>(end));
        });
    }

    static void kernel(const msda::Call& call, int64_t begin, int64_t end) { chosen_kernel().run(call, begin, end); }

public:
    struct Kernel {
        const char* isa = nullptr;
        void (*run)(const msda::Call&, int64_t, int64_t) = nullptr;
    };

    static const Kernel& chosen_kernel() {  // once: the instruction set of this CPU
        static const Kernel chosen = [] {
            Kernel k;
            k.run = msda::select(&k.isa);
            return k;
        }();
        return chosen;
    }
};

}  // namespace m2f

// the ABI tag the Python side checks against an artifact's metadata, and the kernel's instruction set
// (plugins/msda/openvino_extension.py)
extern "C" __attribute__((visibility("default"))) int m2f_msda_abi_version() { return M2F_MSDA_ABI; }
extern "C" __attribute__((visibility("default"))) const char* m2f_msda_isa() {
    return m2f::MSDeformAttn::chosen_kernel().isa;
}

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({
    std::make_shared<ov::OpExtension<m2f::MSDeformAttn>>(),
    std::make_shared<ov::frontend::onnx::OpExtension<m2f::MSDeformAttn>>("MSDeformAttn", "m2f"),
}));
