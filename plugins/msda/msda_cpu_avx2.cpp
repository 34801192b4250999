// msda_cpu.hpp compiled for one instruction set (the flags: plugins/msda/openvino/CMakeLists.txt)
#include "msda_cpu.hpp"

void m2f::msda::run_avx2(const Call& c, int64_t begin, int64_t end) { run_call(c, begin, end); }
