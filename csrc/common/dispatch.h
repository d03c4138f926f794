/* dispatch.h: the one dtype dispatch of every entry point, CPU and CUDA (internal).
 *
 *   return kbit::dispatch(dtype, [&](auto tag) {
 *     using T = kbit::dtype_t<decltype(tag)>;  // float, f16 or bf16
 *     return launch<T>(...);
 *   });
 *
 * dtype must have passed check_dtype (common/args.h): anything but KBIT_F32 and KBIT_F16 is bfloat16 here. */
#pragma once

#include <stdint.h>

#include "kbit.h"
#include "numerics/float16.h"

namespace kbit {

template <class T>
struct dtype_tag {
  using type = T;
};
template <class Tag>
using dtype_t = typename Tag::type;

template <class F>
int dispatch(int32_t dtype, F&& f) {
  switch (dtype) {
    case KBIT_F32: return f(dtype_tag<float>{});
    case KBIT_F16: return f(dtype_tag<f16>{});
    default: return f(dtype_tag<bf16>{});
  }
}

}  // namespace kbit
